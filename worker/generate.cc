#include "worker/generate.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/error.h"

namespace shardtune {

namespace {

// A prompt generation can start from: at least one token, each in the vocabulary.
void CheckPrompt(const std::vector<int64_t>& prompt, int64_t vocab_size) {
  if (prompt.empty()) Fail(ErrorCode::kInvalidArgument, "generation needs at least one prompt token");
  for (int64_t id : prompt) {
    if (id < 0 || id >= vocab_size)
      Fail(ErrorCode::kInvalidArgument, "prompt token {} is outside the vocabulary [0, {})", id, vocab_size);
  }
}

}  // namespace

int64_t SampleToken(const at::Tensor& logits, const GenerateOptions& options, std::mt19937_64& rng) {
  if (options.temperature <= 0.0) return logits.argmax().item<int64_t>();
  // Probabilities in double, sorted descending; the nucleus is the shortest prefix reaching top_p.
  const at::Tensor probs = at::softmax(logits.cpu().to(at::kDouble) / options.temperature, -1).contiguous();
  const double* p = probs.data_ptr<double>();
  std::vector<int64_t> order(static_cast<size_t>(probs.numel()));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [p](int64_t a, int64_t b) { return p[a] > p[b]; });
  size_t keep = 0;
  double mass = 0.0;
  while (keep < order.size() && (keep == 0 || mass < options.top_p)) mass += p[order[keep++]];
  const double draw = (static_cast<double>(rng() >> 11) * 0x1.0p-53) * mass;
  double cumulative = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += p[order[i]];
    if (draw < cumulative) return order[i];
  }
  return order[keep - 1];
}

std::vector<int64_t> WithoutEos(std::vector<int64_t> ids, const std::vector<int64_t>& eos) {
  while (!ids.empty() && std::find(eos.begin(), eos.end(), ids.back()) != eos.end()) ids.pop_back();
  return ids;
}

PromptAndReference SplitAtTargets(const Example& e) {
  // The last run of trained tokens is the reference; everything before it, earlier answers of a
  // conversation included, is the prompt.
  auto end = e.labels.end();
  while (end != e.labels.begin() && *(end - 1) == -100) --end;
  auto begin = end;
  while (begin != e.labels.begin() && *(begin - 1) != -100) --begin;
  PromptAndReference out;
  out.prompt.assign(e.input_ids.begin(), e.input_ids.begin() + (begin - e.labels.begin()));
  out.reference.assign(begin, end);
  return out;
}

std::vector<int64_t> Generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options) {
  const LlamaConfig& config = model.config();
  CheckPrompt(prompt, config.vocab_size);
  at::NoGradGuard no_grad;
  std::mt19937_64 rng(options.seed);
  KvCache cache;
  at::Tensor input = at::tensor(prompt, at::kLong).view({1, -1});
  std::vector<int64_t> generated;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const at::Tensor logits = model.Forward(input, at::Tensor(), &cache);
    const int64_t next = SampleToken(logits[0][logits.size(1) - 1], options, rng);
    generated.push_back(next);
    if (options.stop_at_eos &&
        std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), next) != config.eos_token_ids.end()) {
      break;
    }
    input = at::full({1, 1}, next, at::kLong);
  }
  return generated;
}

std::vector<std::vector<int64_t>> GenerateBatch(const LlamaModel& model,
                                                const std::vector<std::vector<int64_t>>& prompts,
                                                const GenerateOptions& options, const std::vector<uint64_t>& seeds) {
  const LlamaConfig& config = model.config();
  ST_CHECK(prompts.size() == seeds.size(), "{} prompts but {} seeds", prompts.size(), seeds.size());
  const auto b = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int64_t>> generated(prompts.size());
  if (b == 0) return generated;
  int64_t longest = 0;
  for (const auto& prompt : prompts) {
    CheckPrompt(prompt, config.vocab_size);
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompt.size()));
  }
  at::NoGradGuard no_grad;
  std::vector<std::mt19937_64> rngs;
  for (uint64_t seed : seeds) rngs.emplace_back(seed);
  // Left padding: every row's last prompt token is the last column.
  at::Tensor input = at::zeros({b, longest}, at::kLong);
  at::Tensor mask = at::zeros({b, longest}, at::kLong);
  for (int64_t i = 0; i < b; ++i) {
    const auto& prompt = prompts[static_cast<size_t>(i)];
    const auto n = static_cast<int64_t>(prompt.size());
    input[i].narrow(0, longest - n, n).copy_(at::tensor(prompt, at::kLong));
    mask[i].narrow(0, longest - n, n).fill_(1);
  }
  const int64_t end_token = config.eos_token_ids.empty() ? 0 : config.eos_token_ids.front();
  std::vector<bool> ended(prompts.size(), false);
  KvCache cache;
  at::Tensor step_mask = mask;
  for (int64_t t = 0; t < options.max_new_tokens; ++t) {
    const at::Tensor logits = model.Forward(input, step_mask, &cache);
    const at::Tensor last = logits.select(1, logits.size(1) - 1);
    std::vector<int64_t> next(prompts.size(), end_token);
    bool all_ended = true;
    for (int64_t i = 0; i < b; ++i) {
      const auto row = static_cast<size_t>(i);
      if (ended[row]) continue;
      next[row] = SampleToken(last[i], options, rngs[row]);
      generated[row].push_back(next[row]);
      ended[row] = options.stop_at_eos && std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(),
                                                    next[row]) != config.eos_token_ids.end();
      all_ended = all_ended && ended[row];
    }
    if (all_ended) break;
    input = at::tensor(next, at::kLong).view({b, 1});
    // The mask covers the cache (prompt tuning's virtual tokens, which the model puts in front,
    // are real) and the new token.
    mask = at::cat({mask, at::ones({b, 1}, at::kLong)}, 1);
    const int64_t virtual_tokens = cache.length + 1 - mask.size(1);
    step_mask = virtual_tokens > 0 ? at::cat({at::ones({b, virtual_tokens}, at::kLong), mask}, 1) : mask;
  }
  return generated;
}

}  // namespace shardtune
