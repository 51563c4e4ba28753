// A safetensors file: its header parsed alone (as the checkpoint index's reader sees it) and the
// whole file opened and mapped as a model loads it, every tensor's bytes touched.

#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes = shardtune::fuzz::AsText(data, size);
  try {
    // The file's framing: an 8-byte little-endian header length, the JSON header, the data.
    if (bytes.size() >= 8) {
      uint64_t length = 0;
      std::memcpy(&length, bytes.data(), 8);
      if (length <= bytes.size() - 8) {
        shardtune::ParseSafetensorsHeader(bytes.substr(8, length), bytes.size() - 8 - length, "header");
      }
    }
  } catch (const shardtune::Error&) {
  }
  const auto path = shardtune::fuzz::WriteScratch("model.safetensors", bytes);
  try {
    const auto file = shardtune::SafetensorsFile::Open(path);
    unsigned checksum = 0;
    for (const auto& [name, info] : file->tensors()) {
      if (info.numel() < 0) std::abort();  // every accepted shape's element count fits int64
      const std::byte* begin = file->Data(info);
      for (uint64_t i = 0; i < info.end - info.begin; ++i) checksum += static_cast<unsigned>(begin[i]);
    }
    (void)checksum;
  } catch (const shardtune::Error&) {
  }
  try {
    (void)shardtune::ReadSafetensorsFileHeader(path);
  } catch (const shardtune::Error&) {
  }
  return 0;
}
