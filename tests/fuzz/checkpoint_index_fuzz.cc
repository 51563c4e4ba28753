// A training checkpoint read without an engine (sharding/checkpoint_reader.h, as export and
// resume on another world size read it): the input is index.json and two rank files, cut at
// "\n--file--\n", written as step-N/index.json, rank-00000.safetensors and rank-00001.safetensors;
// then every parameter of up to 64 Ki elements is read.

#include <filesystem>
#include <vector>

#include "common/error.h"
#include "sharding/checkpoint_reader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const auto parts = shardtune::fuzz::Split(shardtune::fuzz::AsText(data, size), "\n--file--\n", 3);
  const fs::path dir = shardtune::fuzz::ScratchDir() / "step-1";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const char* names[] = {"step-1/index.json", "step-1/rank-00000.safetensors", "step-1/rank-00001.safetensors"};
  for (size_t i = 0; i < parts.size(); ++i) shardtune::fuzz::WriteScratch(names[i], parts[i]);
  try {
    const shardtune::CheckpointReader reader(dir);
    for (const auto& [name, parameter] : reader.parameters()) {
      if (parameter.numel < 0 || parameter.numel > (1 << 16)) continue;
      std::vector<float> values(static_cast<size_t>(parameter.numel));
      try {
        reader.Read(name, values.data());
      } catch (const shardtune::Error&) {
      }
    }
  } catch (const shardtune::Error&) {
  }
  return 0;
}
