// A model's config.json. A config that parses has every size within hf_config.h's limits, so
// what the trainer derives from it (the parameter count, each layer's linear shapes) is computed
// without overflow: UBSan reports any signed overflow here.

#include <cstdlib>

#include "common/error.h"
#include "common/hf_config.h"
#include "common/model_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using shardtune::ModelConfig;
  try {
    const ModelConfig config = ModelConfig::Parse(std::string(shardtune::fuzz::AsText(data, size)), "config.json");
    if (config.num_parameters() <= 0 || config.num_parameters() > shardtune::config_limits::kParameters) std::abort();
    for (const auto& linear : config.LayerLinears())
      if (linear.in <= 0 || linear.out <= 0) std::abort();
    (void)config.SequenceLimit(config.max_positions(), 0);
    (void)config.Architecture();
  } catch (const shardtune::Error&) {
  }
  return 0;
}
