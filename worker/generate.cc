#include "worker/generate.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/error.h"

namespace shardtune {

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
  if (prompt.empty()) Fail(ErrorCode::kInvalidArgument, "generation needs at least one prompt token");
  for (int64_t id : prompt) {
    if (id < 0 || id >= config.vocab_size) {
      Fail(ErrorCode::kInvalidArgument, "prompt token {} is outside the vocabulary [0, {})", id, config.vocab_size);
    }
  }
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

}  // namespace shardtune
