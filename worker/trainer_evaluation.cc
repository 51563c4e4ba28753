// Validation during training (with evaluation.generate, the answers to validation prompts scored
// too), early stopping and output.keep_best, and the exported model's answers to validation
// prompts (output.generations).

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "common/atomic_file.h"
#include "common/code_sandbox.h"
#include "common/error.h"
#include "common/generation_metrics.h"
#include "sharding/model_layout.h"
#include "worker/evaluation.h"
#include "worker/generate.h"
#include "worker/inference_model.h"
#include "worker/trainer_internal.h"

namespace shardtune {

using nlohmann::json;

std::optional<double> Trainer::Evaluate(int64_t step) {
  if (validation_.empty()) return std::nullopt;
  at::NoGradGuard no_grad;
  // Ranks take micro-batches round-robin; all run the same number of forwards (the collectives
  // of stage 3 must match), so a rank without examples left runs a one-token batch with no targets.
  const int64_t v = validation_.size();
  const int64_t rounds = (v + micro_ * ranks_ - 1) / (micro_ * ranks_);
  const Example idle{{config_.pad_token_id(), config_.pad_token_id()}, {-100, -100}, {}, {}};
  Evaluation evaluation(config_.task(), config_.label_names(), static_cast<int64_t>(tasks_.size()));
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t begin = (round * ranks_ + world_.rank()) * micro_;
    std::vector<Example> owned;
    std::vector<int64_t> example_tasks;
    for (int64_t i = begin; i < std::min(begin + micro_, v); ++i) {
      owned.push_back(validation_.Get(i));
      example_tasks.push_back(validation_.PartOf(i));
    }
    std::vector<const Example*> examples = Pointers(owned);
    if (examples.empty()) {
      examples.push_back(&idle);
      example_tasks.push_back(0);
    }
    const Batch batch = WithVirtualTokens(Collate(examples, config_.pad_token_id()), peft_.prompt_tokens());
    evaluation.Add(model_->Forward(batch, /*training=*/false), batch, examples, example_tasks);
  }
  at::Tensor sums = at::tensor(evaluation.sums(), at::kDouble).to(device_);
  AllReduceSumNow(world_, sums, CollectiveTag{"validation metrics", step});
  const at::Tensor host = sums.cpu();
  for (size_t i = 0; i < evaluation.sums().size(); ++i)
    evaluation.sums()[i] = host[static_cast<int64_t>(i)].item<double>();
  if (evaluation.targets() == 0) return std::nullopt;
  json figures = evaluation.Metrics(task_names_);
  if (!spec_.evaluation.generate.metrics.empty()) figures.update(GenerationFigures(step));
  summary_.last_val_loss = figures.at("val_loss").get<double>();
  for (const auto& [key, value] : figures.items())
    if (value.is_number_float()) last_metrics_[key] = value.get<double>();
  const double metric = figures.at(spec_.training.early_stopping.metric).get<double>();
  if (!rank0_) return metric;
  json record = {{"step", step}, {"epoch", static_cast<double>(step) / static_cast<double>(steps_per_epoch_)}};
  record.update(figures);
  metrics_->Write(record);
  if (progress_->active()) std::fputs("\r\033[K", stderr);
  spdlog::info("step {}: {}", step, Evaluation::Summary(figures));
  return metric;
}

namespace {

// One answer being generated: a validation prompt, its sample number, and the tokens so far.
struct Answer {
  int64_t example = 0, sample = 0;
  std::vector<int64_t> tokens;  // the prompt, then what is generated
  size_t prompt_size = 0;
  std::mt19937_64 rng;
  bool done = false;
};

}  // namespace

json Trainer::GenerationFigures(int64_t step) {
  const GenerateEvaluationSpec& g = spec_.evaluation.generate;
  GenerationScorer scorer(g.metrics, g.num_samples);
  const std::vector<int64_t>& eos = config_.eos_token_ids();
  const int64_t examples = g.max_examples > 0 ? std::min(g.max_examples, validation_.size()) : validation_.size();
  // Every rank decodes every reference first: a reference json_field_f1 cannot use fails on all
  // ranks alike, before any collective.
  std::vector<std::string> references;
  for (int64_t i = 0; i < examples; ++i) {
    const PromptAndReference split = SplitAtTargets(validation_.Get(i));
    references.push_back(tokenizer_->Decode(WithoutEos(split.reference, eos), /*skip_special_tokens=*/true));
    if (std::count(g.metrics.begin(), g.metrics.end(), "json_field_f1") > 0) {
      FieldCounts unused;
      try {
        AddJsonFields("", references.back(), unused);
      } catch (const Error& e) {
        Fail(ErrorCode::kInvalidArgument, "evaluation.generate: json_field_f1: validation example {}: {}", i + 1,
             e.what());
      }
    }
  }
  GenerateOptions sampling;
  sampling.temperature = g.temperature;
  sampling.top_p = g.top_p;
  // Answers are dealt to ranks micro_ at a time, round-robin, as the loss evaluation deals its
  // examples. Each step of a round is one forward of the whole sequences on every rank (no KV
  // cache: under ZeRO-3 no rank holds a layer between its units' gathers), with a filler where a
  // rank has nothing left, until every rank's answers are done.
  const int64_t answers = examples * g.num_samples;
  const int64_t rounds = (answers + micro_ * ranks_ - 1) / (micro_ * ranks_);
  const Example idle{{config_.pad_token_id(), config_.pad_token_id()}, {-100, -100}, {}, {}};
  // pass@K: each answer runs against its example's tests on the rank that wrote it; the passes
  // per example are summed over ranks.
  std::vector<double> passes(scorer.RunsTests() ? static_cast<size_t>(examples) : 0, 0.0);
  SandboxLimits sandbox;
  sandbox.wall_seconds = g.test_timeout_s;
  for (int64_t round = 0; round < rounds; ++round) {
    std::vector<Answer> batch;
    const int64_t begin = (round * ranks_ + world_.rank()) * micro_;
    for (int64_t a = begin; a < std::min(begin + micro_, answers); ++a) {
      Answer answer;
      answer.example = a / g.num_samples;
      answer.sample = a % g.num_samples;
      answer.tokens = SplitAtTargets(validation_.Get(answer.example)).prompt;
      answer.prompt_size = answer.tokens.size();
      // Seeded by the answer alone: the same samples on any number of ranks.
      answer.rng.seed(spec_.training.seed * 1000003ULL + static_cast<uint64_t>(step) * 7919ULL +
                      static_cast<uint64_t>(a));
      answer.done = answer.tokens.empty() || static_cast<int64_t>(answer.tokens.size()) >= max_seq_len_;
      batch.push_back(std::move(answer));
    }
    for (int64_t t = 0; t < g.max_new_tokens; ++t) {
      const int64_t active = std::count_if(batch.begin(), batch.end(), [](const Answer& a) { return !a.done; });
      at::Tensor any = at::full({1}, static_cast<double>(active), at::kDouble).to(device_);
      AllReduceSumNow(world_, any, CollectiveTag{"generation", step});
      if (any.cpu().item<double>() == 0) break;
      std::vector<Example> owned;
      for (const Answer& answer : batch)
        owned.push_back({answer.tokens, std::vector<int64_t>(answer.tokens.size(), -100), {}, {}});
      if (owned.empty()) owned.push_back(idle);
      const Batch collated = Collate(Pointers(owned), config_.pad_token_id());
      const at::Tensor logits = model_->Forward(WithVirtualTokens(collated, peft_.prompt_tokens()), false);
      const int64_t offset = logits.size(1) - collated.input_ids.size(1);  // virtual tokens, if any
      for (size_t b = 0; b < batch.size(); ++b) {
        Answer& answer = batch[b];
        if (answer.done) continue;
        const auto last = offset + static_cast<int64_t>(answer.tokens.size()) - 1;
        const int64_t next = SampleToken(logits[static_cast<int64_t>(b)][last], sampling, answer.rng);
        answer.tokens.push_back(next);
        answer.done = std::find(eos.begin(), eos.end(), next) != eos.end() ||
                      static_cast<int64_t>(answer.tokens.size()) >= max_seq_len_;
      }
    }
    for (const Answer& answer : batch) {
      const std::vector<int64_t> generated(answer.tokens.begin() + static_cast<int64_t>(answer.prompt_size),
                                           answer.tokens.end());
      const std::string text = tokenizer_->Decode(WithoutEos(generated, eos), /*skip_special_tokens=*/true);
      scorer.Add(text, references[static_cast<size_t>(answer.example)],
                 fmt::format("validation example {}", answer.example + 1));
      if (scorer.RunsTests()) {
        const auto e = static_cast<size_t>(answer.example);
        passes[e] += RunPythonSandboxed(TestProgram(validation_tests_.at(e), text), sandbox).passed ? 1 : 0;
      }
    }
  }
  if (scorer.RunsTests()) {
    at::Tensor summed = at::tensor(passes, at::kDouble).to(device_);
    AllReduceSumNow(world_, summed, CollectiveTag{"generation tests", step});
    const at::Tensor host = summed.cpu();
    // Every rank adds the same problems' figures after the sums below are added up: rank 0's count.
    if (world_.rank() == 0) {
      for (int64_t e = 0; e < examples; ++e) scorer.AddTested(static_cast<int64_t>(host[e].item<double>()));
    }
  }
  at::Tensor sums = at::tensor(scorer.sums(), at::kDouble).to(device_);
  AllReduceSumNow(world_, sums, CollectiveTag{"generation metrics", step});
  const at::Tensor host = sums.cpu();
  for (size_t i = 0; i < scorer.sums().size(); ++i) scorer.sums()[i] = host[static_cast<int64_t>(i)].item<double>();
  return scorer.Metrics();
}

bool Trainer::AfterEvaluation(int64_t step, std::optional<double> metric) {
  const EarlyStoppingSpec& stopping = spec_.training.early_stopping;
  if (!metric || (stopping.patience == 0 && !spec_.output.keep_best)) return false;
  const bool improved = best_step_ == 0 || (stopping.Minimizes() ? *metric < best_value_ - stopping.min_delta
                                                                 : *metric > best_value_ + stopping.min_delta);
  if (improved) {
    best_step_ = step;
    best_value_ = *metric;
    evaluations_since_best_ = 0;
    best_unsaved_ = spec_.output.keep_best;  // the loop checkpoints it (DueCheckpoints)
  } else {
    ++evaluations_since_best_;
  }
  summary_.best_step = best_step_;
  if (stopping.patience == 0 || evaluations_since_best_ < stopping.patience) return false;
  if (rank0_) {
    spdlog::info("stopping early at step {}: {} has not improved on {:.6g} (step {}) for {} evaluations", step,
                 stopping.metric, best_value_, best_step_, evaluations_since_best_);
  }
  return true;
}

void Trainer::WriteGenerations() {
  const int64_t wanted = std::min<int64_t>(spec_.output.generations, validation_.size());
  if (wanted == 0 || !rank0_ || !tokenizer_ || config_.task() != ModelTask::kCausalLm) return;
  const std::filesystem::path final_dir = run_dir_.Final();
  const bool merged =
      std::count(spec_.output.export_formats.begin(), spec_.output.export_formats.end(), ExportFormat::kHf) > 0;
  // One process reads the exported model back: what a user of final/ would get.
  const LoadedModel loaded =
      merged ? LoadModelForInference(final_dir)
             : LoadModelForInference(spec_.model.path, final_dir, {}, Quant4FormatOf(quantization_));
  std::string lines;
  for (int64_t i = 0; i < wanted; ++i) {
    const auto [prompt, reference] = SplitAtTargets(validation_.Get(i));
    GenerateOptions options;
    options.max_new_tokens = std::min<int64_t>(256, 2 * static_cast<int64_t>(reference.size()) + 8);
    const std::vector<int64_t> answer = Generate(*loaded.model, prompt, options);
    lines += json({{"prompt", tokenizer_->Decode(prompt, /*skip_special_tokens=*/false)},
                   {"reference", tokenizer_->Decode(reference, /*skip_special_tokens=*/true)},
                   {"generated", tokenizer_->Decode(answer, /*skip_special_tokens=*/true)}})
                 .dump() +
             "\n";
  }
  WriteFileAtomic(run_dir_.Generations(), lines);
  spdlog::info("wrote the exported model's greedy answers to {} validation prompts to {}", wanted,
               run_dir_.Generations().string());
}

}  // namespace shardtune
