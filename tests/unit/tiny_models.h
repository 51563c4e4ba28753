#pragma once
// Tiny Llama-family models written by the tests themselves: a config.json (as text) and random
// weights with a fixed seed, in Hugging Face layout.

#include <filesystem>
#include <string>

#include "sharding/flat_parameters.h"
#include "test_util.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"

namespace shardtune::testing {

// vocab 48, hidden 32, 2 layers, 4 heads, 2 kv heads; `extra` is spliced into the JSON object.
inline std::string TinyConfig(const std::string& model_type = "llama", const std::string& extra = "",
                              int vocab_size = 48) {
  return R"({"model_type": ")" + model_type + R"(", "vocab_size": )" + std::to_string(vocab_size) +
         R"(, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0)" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

// Writes `config_json` and seeded random weights to `dir` (which must not exist).
inline void WriteTinyModel(const std::filesystem::path& dir, const std::string& config_json, uint64_t seed = 0) {
  const std::filesystem::path source = dir.string() + ".config";
  WriteText(source / "config.json", config_json);
  const LlamaConfig config = LlamaConfig::Load(source);
  FlatParameters flat(LlamaParameterSpecs(config));
  InitializeWeights(flat, seed, /*std=*/0.1);
  WriteHfModel(dir, source, flat, ComputeDType::kFp32);
  std::filesystem::remove_all(source);
}

}  // namespace shardtune::testing
