#pragma once
// Text generation from a Llama-family model: greedy (temperature 0), or temperature and
// nucleus (top-p) sampling drawn from a seeded generator, with a KV cache.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "worker/inference_model.h"
#include "worker/models/llama.h"

namespace shardtune {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy
  double top_p = 1.0;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
  bool stop_at_eos = true;  // stop after generating one of config.eos_token_ids
};

// A rendered example cut where its last run of trained tokens starts: the reference is that run
// (the last answer: a completion, or a conversation's last assistant turn and its end token), the
// prompt everything before it (the conversation so far).
struct PromptAndReference {
  std::vector<int64_t> prompt, reference;
};
PromptAndReference SplitAtTargets(const Example& example);

// The next token from one position's logits (vocab,): the argmax at temperature 0, else drawn
// from the top-p nucleus of the tempered distribution with `rng`.
int64_t SampleToken(const at::Tensor& logits, const GenerateOptions& options, std::mt19937_64& rng);

// `ids` without the end-of-sequence tokens it ends with: an answer's end is not part of its
// text (a tokenizer that does not list the model's EOS as special would decode it as a byte).
std::vector<int64_t> WithoutEos(std::vector<int64_t> ids, const std::vector<int64_t>& eos);

// Returns only the new tokens (the prompt is not repeated).
std::vector<int64_t> Generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

// Answers to several prompts at once, one forward per new token for all of them: the prompts
// left-padded (masked out; rotary attention depends only on the distance between positions, so a
// row's answer is the one Generate gives, to rounding), each row sampled with its own
// `seeds[i]`, rows that ended fed their end token until every row has ended. Returns each
// prompt's new tokens, as Generate does.
std::vector<std::vector<int64_t>> GenerateBatch(const LlamaModel& model,
                                                const std::vector<std::vector<int64_t>>& prompts,
                                                const GenerateOptions& options, const std::vector<uint64_t>& seeds);

}  // namespace shardtune
