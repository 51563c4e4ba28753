#include "common/version.h"

#include <fmt/format.h>

#include "build_info.h"

namespace shardtune {

std::string VersionString() { return SHARDTUNE_BUILD_VERSION; }

std::string VersionText(const std::string& program) {
  return fmt::format("{} {}\nbuilt with LibTorch {}, CUDA {}, NCCL {}", program, SHARDTUNE_BUILD_VERSION,
                     SHARDTUNE_BUILD_TORCH_VERSION, SHARDTUNE_BUILD_CUDA_VERSION, SHARDTUNE_BUILD_NCCL_VERSION);
}

}  // namespace shardtune
