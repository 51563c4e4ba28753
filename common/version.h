#pragma once
// What `--version` prints on every executable (docs/cli.md): the project's version (from
// `git describe` at configure time, else CMakeLists.txt's project version) and the LibTorch,
// CUDA and NCCL versions this build was made with ("none" for those it was built without).
// The figures are fixed at configure time (common/build_info.h.in), so every executable of one
// build prints the same, whether or not it links LibTorch itself.

#include <string>

namespace shardtune {

// The version alone: "0.1.0" or, in a git checkout, `git describe` of it ("0.1.0-12-gbc45627").
std::string VersionString();

// Two lines for `PROGRAM --version`:
//   PROGRAM VERSION
//   built with LibTorch X.Y.Z, CUDA X.Y|none, NCCL X.Y.Z|none
std::string VersionText(const std::string& program);

}  // namespace shardtune
