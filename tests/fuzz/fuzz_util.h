#pragma once
// What the fuzz targets share. A target's contract (libFuzzer's): LLVMFuzzerTestOneInput parses
// the bytes as a user's file or request would be parsed; a refusal is a shardtune::Error (the
// parsers' one way to say "bad input", naming the file and the key); anything else escaping (a
// std::out_of_range, a JSON library's type_error, a crash, a sanitizer report, a hang) is a bug
// the fuzzer reports.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune::fuzz {

// A directory under /dev/shm (tmpfs: no disk I/O per execution) for parsers that take only a
// path, one per process, removed when the process exits.
inline const std::filesystem::path& ScratchDir() {
  struct Dir {
    std::filesystem::path path;
    Dir() : path(std::filesystem::path("/dev/shm") / ("shardtune-fuzz-" + std::to_string(::getpid()))) {
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const Dir dir;
  return dir.path;
}

// Writes `bytes` to ScratchDir()/name (replacing it) and returns the path.
inline std::filesystem::path WriteScratch(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = ScratchDir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// The input cut at each occurrence of `separator` (for targets that read several files).
inline std::vector<std::string_view> Split(std::string_view input, std::string_view separator, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = input.find(separator);
    if (at == std::string_view::npos) break;
    parts.push_back(input.substr(0, at));
    input.remove_prefix(at + separator.size());
  }
  parts.push_back(input);
  return parts;
}

inline std::string_view AsText(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

}  // namespace shardtune::fuzz
