#pragma once
// Text generation from a Llama-family model: greedy (temperature 0), or temperature and
// nucleus (top-p) sampling drawn from a seeded generator, with a KV cache.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "sharding/flat_parameters.h"
#include "worker/models/llama.h"

namespace shardtune {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
  bool stop_at_eos = true;  // stop after generating one of config.eos_token_ids
};

// Returns only the new tokens (the prompt is not repeated).
std::vector<int64_t> Generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

// A model loaded from a Hugging Face directory for inference, owning its weights; with a PEFT
// adapter directory, the adapter is applied unmerged (as PEFT's PeftModel runs it).
struct LoadedModel {
  std::unique_ptr<FlatParameters> weights;
  std::unique_ptr<FlatParameters> adapter;
  std::unique_ptr<LlamaModel> model;
};
// `head`: the task and classes of a classifier adapter on a language model (its run's job.yaml
// says them: a PEFT adapter holds its head's weights, not its classes).
struct ClassifierHead {
  ModelTask task = ModelTask::kCausalLm;
  std::vector<std::string> labels;
};
LoadedModel LoadModelForInference(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir = {},
                                  const ClassifierHead& head = {});

}  // namespace shardtune
