#include "worker/trainer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "classification_tasks.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/tensorboard.h"
#include "sharding/adamw.h"
#include "sharding/checkpoint.h"
#include "sharding/loss_scale.h"
#include "sharding/lr_schedule.h"
#include "tiny_models.h"
#include "worker/data/formats.h"
#include "worker/data/mixture.h"
#include "worker/data/token_dataset.h"
#include "worker/evaluate.h"
#include "worker/export.h"
#include "worker/generate.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ScratchDir;

// The taught task: after BOS, count upwards through [3, 47] (wrapping), from any start.
std::string CountingData(int examples, int length, uint64_t seed) {
  std::string text;
  uint64_t state = seed;
  for (int n = 0; n < examples; ++n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    const int start = static_cast<int>((state >> 33) % 45);
    text += "{\"input_ids\": [1";
    for (int i = 0; i < length; ++i) text += ", " + std::to_string(3 + (start + i) % 45);
    text += "]}\n";
  }
  return text;
}

// The process's peak resident memory in bytes, as /proc/self/status reports it (VmHWM, in kB).
int64_t PeakRssFromProc() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  ADD_FAILURE() << "no VmHWM in /proc/self/status";
  return 0;
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteTinyModel(dir_ / "base", testing::TinyConfig("llama", R"("tie_word_embeddings": false)"), 0);
    testing::WriteText(dir_ / "train.jsonl", CountingData(96, 12, 1));
    testing::WriteText(dir_ / "val.jsonl", CountingData(8, 12, 2));
  }

  JobSpec Spec(const std::string& output, const std::string& training) {
    const std::string yaml =
        "name: t\nmodel: {path: base}\n"
        "data: {train: train.jsonl, validation: val.jsonl, format: tokens}\n"
        "output: {dir: " +
        output +
        ", checkpoint_every: 4}\n"
        "training: " +
        training + "\n";
    return ParseJobSpec(yaml, "job.yaml", dir_.path());
  }

  std::vector<json> Metrics(const std::string& output) {
    std::vector<json> lines;
    std::ifstream in(dir_ / output / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      json record = json::parse(line);
      if (!record.contains("load")) lines.push_back(std::move(record));  // each attempt's load record: timings
    }
    return lines;
  }

  // The metrics that depend on the computation alone: without timings and memory high-water marks.
  static std::vector<json> Computed(std::vector<json> lines) {
    for (json& line : lines) {
      for (const char* key : {"tokens_per_s", "step_s", "data_s", "comm_s", "comm_exposed_s", "checkpoint_stall_s",
                              "checkpoint_write_s", "peak_rss_bytes"})
        line.erase(key);
    }
    return lines;
  }

  ScratchDir dir_;
};

TEST_F(TrainerTest, LearnsTheTaughtSequence) {
  const JobSpec spec = Spec("run",
                            "{max_steps: 60, micro_batch_size: 8, global_batch_size: 16, eval_every: 20, "
                            "optimizer: {lr: 3.0e-3}, scheduler: {type: cosine, warmup_steps: 5}}");
  const int64_t peak_rss_before = PeakRssFromProc();
  const auto started = std::chrono::steady_clock::now();
  const TrainingSummary summary = RunTraining(spec);
  const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const int64_t peak_rss_after = PeakRssFromProc();
  EXPECT_TRUE(summary.finished);
  EXPECT_EQ(summary.steps, 60);

  const std::vector<json> metrics = Metrics("run");
  const double first = metrics.front().at("loss").get<double>();
  double last = 0, last_accuracy = 0, steps_s = 0;
  int64_t tokens = 0, peak_rss = peak_rss_before;
  int evals = 0;
  for (const json& m : metrics) {
    if (m.contains("loss")) {
      last = m.at("loss").get<double>();
      for (const char* key : {"step", "epoch", "lr", "grad_norm", "tokens", "tokens_per_s"})
        EXPECT_TRUE(m.contains(key)) << key;
      // Where the step's time went (bench/ reads these): each step's own time, in seconds (the
      // steps' sum fits in the run's), the rate of the step's own tokens over it.
      const double step_s = m.at("step_s").get<double>();
      EXPECT_GT(step_s, 0);
      steps_s += step_s;
      EXPECT_GT(m.at("data_s").get<double>(), 0);
      const int64_t step_tokens = m.at("tokens").get<int64_t>() - tokens;
      tokens = m.at("tokens").get<int64_t>();
      EXPECT_NEAR(m.at("tokens_per_s").get<double>() * step_s, static_cast<double>(step_tokens), 1e-6 * step_tokens);
      EXPECT_EQ(m.at("comm_exposed_s").get<double>(), 0);  // one process: no collective waits
      // The process's high-water mark, in bytes: between the kernel's before the run and after,
      // never falling from one step to the next. (getrusage and /proc's VmHWM read the kernel's
      // per-thread page counters at different moments: a few pages apart, as seen once.)
      constexpr int64_t kCounterSlack = 1 << 20;
      const int64_t peak = m.at("peak_rss_bytes").get<int64_t>();
      EXPECT_GE(peak, peak_rss - (peak_rss == peak_rss_before ? kCounterSlack : 0));
      peak_rss = peak;
      EXPECT_LE(peak_rss, peak_rss_after + kCounterSlack);
    }
    if (m.contains("val_loss")) {
      ++evals;
      EXPECT_NEAR(m.at("perplexity").get<double>(), std::exp(m.at("val_loss").get<double>()), 1e-9);
      last_accuracy = m.at("token_accuracy").get<double>();
    }
  }
  EXPECT_LT(steps_s, run_s);
  EXPECT_GT(last_accuracy, 0.8);  // next tokens of the count, predicted right (0.91 measured)
  EXPECT_GT(first, 3.0);          // about ln(48) at random initialization
  EXPECT_LT(last, first / 4);     // the loss fell
  EXPECT_EQ(evals, 3);            // steps 20, 40, 60
  EXPECT_TRUE(fs::exists(dir_ / "run" / "job.yaml"));
  EXPECT_TRUE(fs::exists(dir_ / "run" / "logs" / "rank-00000.log"));

  // The exported model continues a count it was taught.
  const LoadedModel tuned = LoadModelForInference(dir_ / "run" / "final");
  GenerateOptions greedy;
  greedy.max_new_tokens = 6;
  EXPECT_EQ(Generate(*tuned.model, {1, 20, 21, 22}, greedy), (std::vector<int64_t>{23, 24, 25, 26, 27, 28}));
  const LoadedModel base = LoadModelForInference(dir_ / "base");
  EXPECT_NE(Generate(*base.model, {1, 20, 21, 22}, greedy), (std::vector<int64_t>{23, 24, 25, 26, 27, 28}));
}

TEST_F(TrainerTest, ResumedRunEqualsUninterruptedRunBitForBit) {
  const std::string training =
      "{max_steps: 10, micro_batch_size: 4, global_batch_size: 8, "
      "optimizer: {lr: 1.0e-3, weight_decay: 0.1}, scheduler: {type: cosine, warmup_steps: 2}}";
  RunTraining(Spec("straight", training));

  TrainerOptions interrupt;
  interrupt.stop_after_step = 6;  // the last checkpoint is step 4: steps 5 and 6 are redone
  const TrainingSummary stopped = RunTraining(Spec("resumed", training), interrupt);
  EXPECT_FALSE(stopped.finished);
  EXPECT_TRUE(fs::exists(dir_ / "resumed" / "checkpoints" / "step-4" / "index.json"));
  EXPECT_FALSE(fs::exists(dir_ / "resumed" / "final"));
  const TrainingSummary resumed = RunTraining(Spec("resumed", training));
  EXPECT_EQ(resumed.resumed_from_step, 4);
  EXPECT_TRUE(resumed.finished);

  // Every metric but wall-clock throughput, step by step, and the exported weights, byte by byte.
  const std::vector<json> a = Computed(Metrics("straight")), b = Computed(Metrics("resumed"));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "line " << i;
  EXPECT_EQ(ReadFile(dir_ / "straight" / "final" / "model.safetensors"),
            ReadFile(dir_ / "resumed" / "final" / "model.safetensors"));
}

TEST_F(TrainerTest, GradientAccumulationEqualsOneLargeBatch) {
  RunTraining(Spec("large", "{max_steps: 3, micro_batch_size: 8, global_batch_size: 8, optimizer: {lr: 1.0e-3}}"));
  RunTraining(
      Spec("accumulated", "{max_steps: 3, micro_batch_size: 2, global_batch_size: 8, optimizer: {lr: 1.0e-3}}"));
  const std::vector<json> a = Metrics("large"), b = Metrics("accumulated");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].contains("loss")) continue;
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-5) << "step " << i + 1;
    EXPECT_NEAR(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(), 1e-5) << "step " << i + 1;
  }
  const LoadedModel x = LoadModelForInference(dir_ / "large" / "final");
  const LoadedModel y = LoadModelForInference(dir_ / "accumulated" / "final");
  // Adam divides by sqrt(v): for elements whose gradient is almost zero, a rounding difference in
  // the gradient moves the update by a visible fraction of lr (1e-3 here), so allow 5% of it.
  EXPECT_TRUE(at::allclose(x.weights->values(), y.weights->values(), 0, 5e-5))
      << "max difference " << (x.weights->values() - y.weights->values()).abs().max().item<double>();
}

TEST_F(TrainerTest, RefusesToOverwriteAFinishedRun) {
  const JobSpec spec = Spec("done", "{max_steps: 1}");
  RunTraining(spec);
  const std::string before = ReadFile(dir_ / "done" / "final" / "model.safetensors");
  try {
    RunTraining(spec);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(std::string(e.what()).find("holds a finished run"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ReadFile(dir_ / "done" / "final" / "model.safetensors"), before);
}

TEST_F(TrainerTest, BatchesWithoutTargetsTrainNothingAndDoNotFail) {
  std::string text;
  for (int i = 0; i < 8; ++i) text += "{\"input_ids\": [1, 5, 6, 7], \"labels\": [-100, -100, -100, -100]}\n";
  testing::WriteText(dir_ / "prompts.jsonl", text);
  const std::string yaml =
      "name: t\nmodel: {path: base}\ndata: {train: prompts.jsonl, format: tokens}\n"
      "output: {dir: empty}\ntraining: {max_steps: 2, micro_batch_size: 2, global_batch_size: 4}\n";
  const TrainingSummary summary = RunTraining(ParseJobSpec(yaml, "job.yaml", dir_.path()));
  EXPECT_TRUE(summary.finished);
  const LoadedModel base = LoadModelForInference(dir_ / "base");
  const LoadedModel after = LoadModelForInference(dir_ / "empty" / "final");
  EXPECT_TRUE(at::equal(base.weights->values(), after.weights->values()));
}

TokenDataset ReadTokens(const fs::path& path, int64_t vocab_size, int64_t max_seq_len) {
  FormatOptions options;
  options.format = DataFormat::kTokens;
  options.vocab_size = vocab_size;
  options.max_seq_len = max_seq_len;
  return ReadDataset(path, options);
}

// Reads `text` as a tokens file expecting an error containing `fragment` (and "file:line").
void ExpectDataError(const std::string& text, const std::string& fragment) {
  ScratchDir dir;
  testing::WriteText(dir / "d.jsonl", text);
  try {
    ReadTokens(dir / "d.jsonl", 48, 16);
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(TokenDataset, ErrorsNameFileLineAndField) {
  const std::string good = "{\"input_ids\": [1, 2, 3]}\n";
  ExpectDataError(good + "{\"input_ids\": [1, 2\n", "d.jsonl:2: [invalid_json]");
  ExpectDataError(good + "\n" + "[1, 2]\n", "d.jsonl:3: [data_type] expected a JSON object");
  ExpectDataError("{\"ids\": [1]}\n", "d.jsonl:1: [unrecognized_key] unknown key 'ids'");
  ExpectDataError("{\"labels\": [1]}\n", "d.jsonl:1: [missing_key] 'input_ids' is missing");
  ExpectDataError("{\"input_ids\": []}\n", "[missing_content] 'input_ids' is empty");
  ExpectDataError("{\"input_ids\": [1, \"two\"]}\n", "input_ids[1] must be an integer, got \"two\"");
  ExpectDataError("{\"input_ids\": [1, 48]}\n",
                  "[token_out_of_vocabulary] input_ids[1] = 48 is outside the vocabulary [0, 48)");
  ExpectDataError("{\"input_ids\": [1, -100]}\n", "input_ids[1] = -100 is outside the vocabulary");
  ExpectDataError("{\"input_ids\": [1, 2], \"labels\": [-100]}\n", "'labels' has 1 entries but 'input_ids' has 2");
  ExpectDataError("{\"input_ids\": [1, 2], \"labels\": [-100, -5]}\n",
                  "labels[1] = -5 is outside the vocabulary [0, 48) (or -100");
  ExpectDataError("\n\n", "[empty_dataset]");
}

TEST(TokenDataset, LabelsDefaultToInputsAndLongExamplesAreTruncated) {
  ScratchDir dir;
  testing::WriteText(
      dir / "d.jsonl",
      "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2, 3, 4, 5], \"labels\": [-100, -100, 3, 4, 5]}\n");
  const TokenDataset data = ReadTokens(dir / "d.jsonl", 48, 4);
  ASSERT_EQ(data.examples.size(), 2u);
  EXPECT_EQ(data.examples[0].labels, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(data.examples[0].target_tokens(), 2);
  EXPECT_EQ(data.examples[1].input_ids.size(), 4u);
  EXPECT_EQ(data.examples[1].target_tokens(), 2);  // labels 3 and 4 after the shift
  EXPECT_EQ(data.truncated, 1);

  const Batch batch = Collate({&data.examples[0], &data.examples[1]}, /*pad_id=*/0);
  EXPECT_EQ(batch.input_ids.sizes(), (at::IntArrayRef{2, 4}));
  EXPECT_EQ(batch.labels[0][3].item<int64_t>(), -100);
  EXPECT_EQ(batch.attention_mask.sum().item<int64_t>(), 7);
  EXPECT_EQ(batch.input_tokens, 7);
}

TEST(TokenDataset, EpochOrderIsASeededPermutation) {
  const auto a = EpochOrder(50, 42, 0, true);
  EXPECT_EQ(a, EpochOrder(50, 42, 0, true));
  EXPECT_NE(a, EpochOrder(50, 42, 1, true));
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, EpochOrder(50, 42, 0, false));
}

TEST(LrSchedule, WarmupThenDecayAsHuggingFaceDefinesIt) {
  OptimizerSpec optimizer;
  optimizer.lr = 1.0;
  SchedulerSpec scheduler;
  scheduler.warmup_steps = 10;
  scheduler.type = SchedulerType::kCosine;
  EXPECT_DOUBLE_EQ(LearningRateAt(optimizer, scheduler, 0, 110), 0.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(optimizer, scheduler, 5, 110), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(optimizer, scheduler, 10, 110), 1.0);
  EXPECT_NEAR(LearningRateAt(optimizer, scheduler, 60, 110), 0.5, 1e-12);
  EXPECT_NEAR(LearningRateAt(optimizer, scheduler, 110, 110), 0.0, 1e-12);
  scheduler.type = SchedulerType::kLinear;
  scheduler.min_lr_ratio = 0.1;
  EXPECT_NEAR(LearningRateAt(optimizer, scheduler, 60, 110), 0.55, 1e-12);
  scheduler.type = SchedulerType::kConstant;
  EXPECT_DOUBLE_EQ(LearningRateAt(optimizer, scheduler, 100, 110), 1.0);
}

// Random sequences, so that what is learned from training never transfers to validation.
std::string RandomTokens(int examples, int length, uint64_t seed) {
  std::string text;
  uint64_t state = seed;
  for (int n = 0; n < examples; ++n) {
    text += "{\"input_ids\": [1";
    for (int i = 0; i < length; ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      text += ", " + std::to_string(3 + (state >> 33) % 45);
    }
    text += "]}\n";
  }
  return text;
}

TEST_F(TrainerTest, EarlyStoppingStopsWhenOverfittingAndExportsTheBestWeights) {
  // A task built to overfit: eight random sequences to memorize, eight others to validate on.
  testing::WriteText(dir_ / "memorize.jsonl", RandomTokens(8, 12, 5));
  testing::WriteText(dir_ / "unseen.jsonl", RandomTokens(8, 12, 6));
  const JobSpec spec = ParseJobSpec(
      "name: t\nmodel: {path: base}\n"
      "data: {train: memorize.jsonl, validation: unseen.jsonl, format: tokens}\n"
      "output: {dir: run, keep_best: true}\n"
      "training: {max_steps: 400, micro_batch_size: 8, eval_every: 5, optimizer: {lr: 1.0e-2},"
      " scheduler: {type: constant}, early_stopping: {patience: 3, min_delta: 0.001}}\n",
      "job.yaml", dir_.path());
  const TrainingSummary summary = RunTraining(spec);
  EXPECT_TRUE(summary.finished);
  EXPECT_TRUE(summary.stopped_early);
  EXPECT_LT(summary.steps, 400);
  // It stopped three evaluations after the best, which was the lowest validation loss seen.
  std::vector<std::pair<int64_t, double>> evaluations;
  for (const json& m : Metrics("run"))
    if (m.contains("val_loss")) evaluations.emplace_back(m.at("step").get<int64_t>(), m.at("val_loss").get<double>());
  ASSERT_GE(evaluations.size(), 4u);
  const auto best = std::min_element(evaluations.begin(), evaluations.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  EXPECT_EQ(summary.best_step, best->first);
  EXPECT_EQ(summary.steps, best->first + 3 * 5);
  EXPECT_GT(evaluations.back().second, best->second + 0.1);  // it was overfitting
  // final/ holds the best evaluation's weights, not the last step's.
  SingleProcessCommunicator world;
  ExportCheckpoint(
      {dir_ / "run" / "checkpoints" / "best", ExportFormat::kHf, dir_ / "best-export", ComputeDType::kFp32}, world);
  EXPECT_EQ(ReadFile(dir_ / "run" / "final" / "model.safetensors"),
            ReadFile(dir_ / "best-export" / "model.safetensors"));
  EXPECT_EQ(ReadTrainerState(dir_ / "run" / "checkpoints" / "best").step, best->first);
}

TEST_F(TrainerTest, TensorBoardScalarsEqualTheMetricsAndResumesRestartTheCurve) {
  TrainerOptions interrupt;
  interrupt.stop_after_step = 6;
  RunTraining(Spec("run", "{max_steps: 8, micro_batch_size: 4, eval_every: 4}"), interrupt);
  RunTraining(Spec("run", "{max_steps: 8, micro_batch_size: 4, eval_every: 4}"));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir_ / "run" / "tb")) files.push_back(entry.path());
  ASSERT_EQ(files.size(), 2u);      // one per run
  std::map<int64_t, float> losses;  // by step, the later file's values replacing the earlier's
  bool restarted = false;
  std::vector<std::vector<TensorBoardEvent>> runs;
  for (const auto& f : files) runs.push_back(ReadTensorBoardFile(f));
  // The resumed run's file is the one that starts with a SessionLog START: read it last.
  auto resumed = [](const std::vector<TensorBoardEvent>& events) {
    return events.size() > 1 && events[1].session_start;
  };
  std::sort(runs.begin(), runs.end(), [&](const auto& a, const auto& b) { return !resumed(a) && resumed(b); });
  for (const auto& events : runs) {
    for (const TensorBoardEvent& e : events) {
      if (e.session_start) {
        restarted = true;
        EXPECT_EQ(e.step, 4);  // the checkpoint the second run resumed from
      }
      for (const auto& [tag, value] : e.scalars)
        if (tag == "loss") losses[e.step] = value;
    }
  }
  EXPECT_TRUE(restarted);
  size_t checked = 0;
  for (const json& m : Metrics("run")) {
    if (!m.contains("loss")) continue;
    EXPECT_EQ(losses.at(m.at("step").get<int64_t>()), static_cast<float>(m.at("loss").get<double>()));
    ++checked;
  }
  EXPECT_EQ(checked, 8u);
}

TEST_F(TrainerTest, WritesTheExportedModelsAnswersToValidationPrompts) {
  testing::WriteByteLevelModel(dir_ / "bytes");
  std::string text;
  for (int n = 0; n < 24; ++n)
    text += json({{"prompt", "count from " + std::to_string(n % 5) + ":"}, {"completion", " 1 2 3"}}).dump() + "\n";
  testing::WriteText(dir_ / "completions.jsonl", text);
  const JobSpec spec = ParseJobSpec(
      "name: t\nmodel: {path: bytes}\ndata: {train: completions.jsonl, validation_split: 0.25, format: completion}\n"
      "training: {max_steps: 4, micro_batch_size: 4}\noutput: {dir: run, generations: 3}\n",
      "job.yaml", dir_.path());
  EXPECT_TRUE(RunTraining(spec).finished);
  std::ifstream in(dir_ / "run" / "generations.jsonl");
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const json g = json::parse(line);
    EXPECT_EQ(g.at("prompt").get<std::string>().rfind("count from ", 0), 0u) << line;
    EXPECT_EQ(g.at("reference"), " 1 2 3") << line;
    EXPECT_TRUE(g.at("generated").is_string()) << line;
  }
  EXPECT_EQ(lines, 3);
  try {  // token ids have no text to answer in
    ParseJobSpec(
        "name: t\nmodel: {path: base}\ndata: {train: train.jsonl, format: tokens}\n"
        "output: {dir: x, generations: 2}\n",
        "job.yaml", dir_.path());
    FAIL() << "accepted";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("output.generations"), std::string::npos) << e.what();
  }
}

// evaluation.generate: the answers the training model generates at each evaluation (a whole
// forward per token, as every ZeRO stage can run it) score as `shardtune evaluate` scores the
// exported model's (generated with the KV cache), metric by metric.
TEST_F(TrainerTest, GenerationMetricsDuringTrainingEqualThoseOfTheExportedModel) {
  testing::WriteByteLevelModel(dir_ / "bytes");
  const auto records = [](int count, int offset) {
    std::string text;
    for (int n = offset; n < offset + count; ++n) {
      const int from = n % 5;
      text += json({{"prompt", "count from " + std::to_string(from) + ":"},
                    {"completion", " " + std::to_string(from + 1) + " " + std::to_string(from + 2) + " " +
                                       std::to_string(from + 3) + " " + std::to_string(from + 4) + " " +
                                       std::to_string(from + 5)}})
                  .dump() +
              "\n";
    }
    return text;
  };
  testing::WriteText(dir_ / "completions.jsonl", records(40, 0));
  testing::WriteText(dir_ / "completions-val.jsonl", records(6, 3));
  const JobSpec spec = ParseJobSpec(
      "name: t\nmodel: {path: bytes}\n"
      "data: {train: completions.jsonl, validation: completions-val.jsonl, format: completion}\n"
      "training: {max_steps: 24, eval_every: 12, micro_batch_size: 4, optimizer: {lr: 1.0e-2},\n"
      "           early_stopping: {patience: 5, metric: rouge_l}}\n"
      "evaluation: {generate: {metrics: [exact_match, rouge_l, bleu], max_new_tokens: 16}}\n"
      "output: {dir: run}\n",
      "job.yaml", dir_.path());
  EXPECT_FALSE(spec.training.early_stopping.Minimizes());
  EXPECT_TRUE(RunTraining(spec).finished);
  std::vector<json> evaluations;
  for (const json& line : Metrics("run"))
    if (line.contains("val_loss")) evaluations.push_back(line);
  ASSERT_EQ(evaluations.size(), 2u);
  for (const json& e : evaluations) {
    EXPECT_EQ(e.at("generated"), 6) << e.dump();
    for (const char* name : {"exact_match", "rouge_l", "bleu"}) {
      ASSERT_TRUE(e.contains(name)) << e.dump();
      EXPECT_GE(e.at(name).get<double>(), 0.0);
    }
    EXPECT_LE(e.at("rouge_l").get<double>(), 1.0);
  }
  EvaluateOptions options;
  options.model = dir_ / "run" / "final";
  options.data = dir_ / "completions-val.jsonl";
  options.format = "completion";
  options.generation_metrics = {"exact_match", "rouge_l", "bleu"};
  options.generate.max_new_tokens = 16;
  const json exported = EvaluateModel(options).at("generation");
  const json& last = evaluations.back();
  EXPECT_GT(last.at("rouge_l").get<double>(), 0.0);  // some answers right in part: the comparison means something
  for (const char* name : {"exact_match", "rouge_l", "bleu"})
    EXPECT_NEAR(last.at(name).get<double>(), exported.at(name).get<double>(), 1e-9) << name;
  // The spec's checks.
  const auto problem = [&](const std::string& evaluation, const std::string& extra = "") {
    try {
      ParseJobSpec(
          "name: t\nmodel: {path: bytes}\n"
          "data: {train: completions.jsonl, validation: completions-val.jsonl, format: completion}\n"
          "output: {dir: x}\nevaluation: " +
              evaluation + "\n" + extra,
          "job.yaml", dir_.path());
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(problem("{generate: {metrics: [rouge]}}").find("unknown generation metric 'rouge'"), std::string::npos);
  EXPECT_NE(problem("{generate: {metrics: [pass@2]}}").find("needs at least 2 samples"), std::string::npos);
  EXPECT_NE(problem("{generate: {metrics: [bleu], num_samples: 4}}").find("temperature > 0"), std::string::npos);
  EXPECT_NE(problem("{generate: {metrics: [bleu]}}", "training: {early_stopping: {patience: 2, metric: rouge_l}}")
                .find("list it in evaluation.generate.metrics"),
            std::string::npos);
  EXPECT_NE(problem("{generate: {metrics: [bleu], max_new_token: 3}}").find("max_new_token"), std::string::npos);
}

// pass@k end to end: a model taught three completions by heart writes them back; each runs
// against its record's tests in the sandbox: one passes, one fails its assertion, one loops until
// the test timeout. Only the first counts, and each answer's outcome is in --generations-out.
TEST_F(TrainerTest, PassAtKRunsEachAnswerAgainstItsTestsInTheSandbox) {
  if (access("/usr/bin/bwrap", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/bwrap (scripts/install-deps.sh)";
  testing::WriteByteLevelModel(dir_ / "bytes");
  const std::vector<json> problems = {
      {{"prompt", "def add(a, b):\n"}, {"completion", "    return a + b\n"}, {"tests", "assert add(2, 3) == 5"}},
      {{"prompt", "def sub(a, b):\n"}, {"completion", "    return a + b\n"}, {"tests", "assert sub(5, 3) == 2"}},
      {{"prompt", "def spin():\n"},
       {"completion", "    while 1: pass\n"},
       {"tests", "def check(f):\n    f()"},
       {"entry_point", "spin"}}};
  std::string text;
  for (int copy = 0; copy < 8; ++copy)
    for (const json& p : problems) text += p.dump() + "\n";
  testing::WriteText(dir_ / "code.jsonl", text);
  std::string tests_only;  // completions are optional where there are tests
  for (json p : problems) {
    p.erase("completion");
    tests_only += p.dump() + "\n";
  }
  testing::WriteText(dir_ / "code-tests.jsonl", tests_only);
  const JobSpec spec = ParseJobSpec(
      "name: t\nmodel: {path: bytes}\ndata: {train: code.jsonl, validation: code-tests.jsonl, format: completion}\n"
      "training: {max_steps: 60, micro_batch_size: 6, optimizer: {lr: 1.0e-2}}\noutput: {dir: code-run}\n"
      "evaluation: {generate: {metrics: [pass@1], max_new_tokens: 24, test_timeout_s: 1}}\n",
      "job.yaml", dir_.path());
  ASSERT_TRUE(RunTraining(spec).finished);
  EvaluateOptions options;
  options.model = dir_ / "code-run" / "final";
  options.data = dir_ / "code-tests.jsonl";
  options.format = "completion";
  options.generation_metrics = {"pass@1"};
  options.generate.max_new_tokens = 24;
  options.sandbox.wall_seconds = 1;
  options.generations_out = dir_ / "answers.jsonl";
  const json scored = EvaluateModel(options).at("generation");
  EXPECT_EQ(scored.at("problems"), 3);
  EXPECT_NEAR(scored.at("pass@1").get<double>(), 1.0 / 3.0, 1e-12) << scored.dump();
  std::ifstream in(dir_ / "answers.jsonl");
  std::vector<json> answers;
  for (std::string line; std::getline(in, line);) answers.push_back(json::parse(line));
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(answers[0].at("generated"), "    return a + b\n") << "the model did not learn its completions";
  EXPECT_EQ(answers[0].at("outcome"), "passed");
  EXPECT_EQ(answers[1].at("outcome"), "exit status 1");
  EXPECT_EQ(answers[2].at("outcome"), "timed out after 1 s");
  // The same during training (evaluation.generate): the evaluation after the last step.
  json last;
  for (const json& line : Metrics("code-run"))
    if (line.contains("pass@1")) last = line;
  EXPECT_EQ(last.value("problems", 0), 3) << last.dump();
  EXPECT_NEAR(last.value("pass@1", -1.0), 1.0 / 3.0, 1e-12) << last.dump();
  // A record without tests is named by its line.
  testing::WriteText(dir_ / "untested.jsonl",
                     problems[0].dump() + "\n" + json({{"prompt", "x"}, {"completion", "y"}}).dump() + "\n");
  options.data = dir_ / "untested.jsonl";
  try {
    EvaluateModel(options);
    FAIL() << "a record without tests was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("untested.jsonl:2: [missing_key] 'tests' is missing"), std::string::npos)
        << e.what();
  }
  options.generation_metrics = {"pass@2"};
  EXPECT_THROW(EvaluateModel(options), Error);  // more than the samples per problem
}

TEST(AdamW, FollowsTheReferenceArithmeticAndSkipsDecayWhereTold) {
  OptimizerSpec spec;
  spec.lr = 0.1;
  spec.weight_decay = 0.5;
  spec.beta1 = 0.9;
  spec.beta2 = 0.99;
  spec.eps = 1e-8;
  // Four elements; the last two (a "bias") get no decay.
  AdamW optimizer(spec, 4, {{0, 2}});
  at::Tensor params = at::tensor(std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f});
  const std::vector<std::vector<float>> grads = {
      {0.1f, -0.2f, 0.3f, 0.0f}, {0.2f, 0.1f, -0.1f, 1.0f}, {-0.3f, 0.0f, 0.2f, 0.5f}};
  // The reference in double, written from the AdamW paper's algorithm with decoupled decay.
  std::vector<double> p = {1.0, -2.0, 0.5, 3.0}, m(4, 0.0), v(4, 0.0);
  for (size_t step = 1; step <= grads.size(); ++step) {
    optimizer.Step(params, at::tensor(grads[step - 1]), spec.lr);
    for (size_t i = 0; i < 4; ++i) {
      const double g = grads[step - 1][i];
      if (i < 2) p[i] *= 1 - spec.lr * spec.weight_decay;
      m[i] = spec.beta1 * m[i] + (1 - spec.beta1) * g;
      v[i] = spec.beta2 * v[i] + (1 - spec.beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(spec.beta1, step));
      const double v_hat = v[i] / (1 - std::pow(spec.beta2, step));
      p[i] -= spec.lr * m_hat / (std::sqrt(v_hat) + spec.eps);
    }
  }
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(params[i].item<double>(), p[i], 1e-6) << i;
  EXPECT_EQ(optimizer.step(), 3);
}

// The range given in pieces (as ZeRO passes each unit's shard where it lies inside the unit's
// parameters) updates as the same range in one tensor, decay spans crossing pieces, to the bit
// (the kernel's vector body and scalar tail round alike).
TEST(AdamW, ARangeInPiecesUpdatesAsTheWholeRange) {
  OptimizerSpec spec;
  spec.lr = 0.05;
  spec.weight_decay = 0.3;
  const int64_t n = 50000;  // beyond the kernel's parallel grain
  const std::vector<DecayRange> decay = {{10, 20000}, {30000, 15000}};
  at::manual_seed(3);
  const at::Tensor start = at::randn({n});
  const std::vector<at::Tensor> grads = {at::randn({n}), at::randn({n})};
  AdamW whole(spec, n, decay), pieces(spec, n, decay);
  at::Tensor reference = start.clone();
  // Pieces in separate buffers, boundaries inside decayed and undecayed spans.
  std::vector<at::Tensor> parts = {start.narrow(0, 0, 15000).clone(), start.narrow(0, 15000, 25000).clone(),
                                   start.narrow(0, 40000, n - 40000).clone()};
  for (const at::Tensor& g : grads) {
    whole.Step(reference, g, spec.lr, 0.5);
    pieces.Step(parts, g, spec.lr, 0.5);
  }
  EXPECT_TRUE(at::equal(at::cat(parts), reference))
      << (at::cat(parts) != reference).sum().item<int64_t>() << " elements differ, by up to "
      << (at::cat(parts) - reference).abs().max().item<float>();
  EXPECT_TRUE(at::equal(pieces.exp_avg_sq(), whole.exp_avg_sq()));
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST(DynamicLossScale, SkipsOverflowsHalvesAndGrows) {
  DynamicLossScale scale(/*enabled=*/true, /*initial=*/1024, /*growth_interval=*/3);
  EXPECT_FALSE(scale.Update(std::numeric_limits<double>::infinity()));
  EXPECT_EQ(scale.scale(), 512);
  EXPECT_FALSE(scale.Update(std::nan("")));
  EXPECT_EQ(scale.scale(), 256);
  EXPECT_TRUE(scale.Update(10.0));
  EXPECT_TRUE(scale.Update(10.0));
  EXPECT_EQ(scale.scale(), 256);
  EXPECT_TRUE(scale.Update(10.0));  // the third clean step in a row
  EXPECT_EQ(scale.scale(), 512);
  DynamicLossScale off(/*enabled=*/false);
  EXPECT_EQ(off.scale(), 1);
  EXPECT_FALSE(off.Update(std::numeric_limits<double>::infinity()));  // a NaN gradient never steps
  EXPECT_EQ(off.scale(), 1);
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST(Mixture, ProbabilitiesFollowWeightsOrTemperature) {
  const auto by_weight = MixtureProbabilities({10, 30}, {1.0, 3.0}, 0);
  EXPECT_DOUBLE_EQ(by_weight[0], 0.25);
  const auto by_size = MixtureProbabilities({10, 30}, {1.0, 1.0}, 1.0);
  EXPECT_DOUBLE_EQ(by_size[1], 0.75);
  const auto flat = MixtureProbabilities({10, 1000}, {1.0, 1.0}, 1000.0);
  EXPECT_NEAR(flat[0], 0.5, 0.01);
}

TEST(Mixture, OrderIsSeededProportionalAndWalksEachTask) {
  const std::vector<TaskRange> tasks = {{0, 10, 0.25}, {10, 30, 0.75}};
  const auto order = MixtureOrder(tasks, 4000, 42, 0);
  EXPECT_EQ(order, MixtureOrder(tasks, 4000, 42, 0));
  EXPECT_NE(order, MixtureOrder(tasks, 4000, 42, 1));
  int64_t first = 0;
  for (int64_t i : order) first += i < 10;
  EXPECT_NEAR(static_cast<double>(first) / 4000, 0.25, 0.03);
  // The first ten draws of task 0 are its ten examples, each once.
  std::vector<int64_t> seen;
  for (int64_t i : order) {
    if (i < 10 && seen.size() < 10) seen.push_back(i);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST_F(TrainerTest, MultiTaskJobsReportEachTaskAndResumeExactly) {
  testing::WriteText(dir_ / "other.jsonl", CountingData(40, 8, 7));
  auto spec = [&](const std::string& out) {
    return ParseJobSpec(
        "name: mix\nmodel: {path: base}\n"
        "data: {validation_split: 0.1, format: tokens, tasks: [{name: count, train: train.jsonl, weight: 3},"
        " {name: short, train: other.jsonl}]}\n"
        "output: {dir: " +
            out +
            ", checkpoint_every: 3}\n"
            "training: {max_steps: 8, micro_batch_size: 4, eval_every: 4, optimizer: {lr: 1.0e-3}}\n",
        "job.yaml", dir_.path());
  };
  RunTraining(spec("straight"));
  TrainerOptions interrupt;
  interrupt.stop_after_step = 5;
  RunTraining(spec("resumed"), interrupt);
  EXPECT_EQ(RunTraining(spec("resumed")).resumed_from_step, 3);
  const std::vector<json> a = Computed(Metrics("straight")), b = Computed(Metrics("resumed"));
  ASSERT_EQ(a.size(), b.size());
  int evaluations = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i], b[i]) << i;
    if (a[i].contains("val_loss")) {
      ++evaluations;
      ASSERT_TRUE(a[i].contains("tasks")) << a[i].dump();
      EXPECT_TRUE(a[i]["tasks"].contains("count"));
      EXPECT_TRUE(a[i]["tasks"].contains("short"));
    }
  }
  EXPECT_EQ(evaluations, 2);
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST(GroupByLength, SortsWithinGroupsAndKeepsEveryExample) {
  std::vector<Example> examples;
  for (int64_t n : {3, 9, 1, 7, 5, 2})
    examples.push_back(Example{std::vector<int64_t>(static_cast<size_t>(n), 1), {}, {}, {}});
  std::vector<int64_t> order = {0, 1, 2, 3, 4, 5};
  GroupByLength(order, examples, 3);
  EXPECT_EQ(order, (std::vector<int64_t>{1, 0, 2, 3, 4, 5}));  // lengths 9 3 1 | 7 5 2
}

}  // namespace
}  // namespace shardtune
