#include "common/job_spec.h"

#include <gtest/gtest.h>

#include "common/job_checks.h"
#include "test_util.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

// A directory with the files a minimal valid spec names: model/config.json, data/train.jsonl.
class JobSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteText(dir_ / "model" / "config.json", "{}");
    testing::WriteText(dir_ / "data" / "train.jsonl", "{\"input_ids\": [1, 2]}\n");
  }

  JobSpec Parse(const std::string& yaml) { return ParseJobSpec(yaml, "job.yaml", dir_.path()); }

  // Parses `yaml` expecting a SpecError; returns its problems.
  std::vector<std::string> Problems(const std::string& yaml) {
    try {
      Parse(yaml);
    } catch (const SpecError& e) {
      return e.problems();
    }
    ADD_FAILURE() << "expected the spec to be rejected:\n" << yaml;
    return {};
  }

  // Expects exactly one problem, containing every fragment.
  void ExpectProblem(const std::string& yaml, std::initializer_list<std::string> fragments) {
    const auto problems = Problems(yaml);
    ASSERT_EQ(problems.size(), 1u) << (problems.empty() ? "none" : problems[0]);
    for (const auto& fragment : fragments) EXPECT_NE(problems[0].find(fragment), std::string::npos) << problems[0];
  }

  ScratchDir dir_;
};

constexpr const char* kMinimal = R"(name: support-bot
model: {path: model}
data: {train: data/train.jsonl, format: tokens}
output: {dir: runs/support-bot}
)";

TEST_F(JobSpecTest, MinimalSpecGetsDocumentedDefaultsAndAbsolutePaths) {
  const JobSpec spec = Parse(kMinimal);
  EXPECT_EQ(spec.name, "support-bot");
  EXPECT_EQ(spec.model.path, (dir_.path() / "model").string());
  EXPECT_EQ(spec.output.dir, (dir_.path() / "runs/support-bot").string());
  EXPECT_EQ(spec.model.dtype, ComputeDType::kFp32);
  EXPECT_EQ(spec.method.type, MethodType::kFull);
  EXPECT_EQ(spec.training.epochs, 1);
  EXPECT_EQ(spec.training.micro_batch_size, 1);
  EXPECT_DOUBLE_EQ(spec.training.optimizer.lr, 5e-5);
  EXPECT_DOUBLE_EQ(spec.training.grad_clip, 1.0);
  EXPECT_EQ(spec.training.seed, 42u);
  EXPECT_EQ(spec.data.max_seq_len, 2048);
  EXPECT_EQ(spec.sharding.zero_stage, 0);
  ASSERT_EQ(spec.output.export_formats.size(), 1u);
  EXPECT_EQ(spec.output.export_formats[0], ExportFormat::kHf);
  EXPECT_EQ(spec.GlobalBatchSize(1), 1);
}

TEST_F(JobSpecTest, FullSpecParsesEveryKey) {
  const JobSpec spec = Parse(R"(name: llama-ft
labels: {team: nlp}
model: {path: model, dtype: bf16, task: causal_lm}
method: {type: full}
data: {train: data/train.jsonl, validation_split: 0.05, format: tokens, max_seq_len: 512, packing: false, shuffle: false}
training:
  max_steps: 100
  micro_batch_size: 4
  global_batch_size: 64
  optimizer: {type: adamw, lr: 2.0e-4, weight_decay: 0.1, beta1: 0.8, beta2: 0.95, eps: 1.0e-6}
  scheduler: {type: cosine, warmup_steps: 10, min_lr_ratio: 0.1}
  grad_clip: 0.5
  seed: 7
  eval_every: 20
  log_every: 5
sharding: {zero_stage: 3, backend: mpi, shard_group_size: 2, offload_optimizer: none, collective_timeout_s: 60}
output: {dir: out, checkpoint_every: 50, keep_checkpoints: 2, export: [hf]}
resources: {nodes: 2, ranks_per_node: 2}
)");
  EXPECT_EQ(spec.labels.at("team"), "nlp");
  EXPECT_EQ(spec.model.dtype, ComputeDType::kBf16);
  EXPECT_DOUBLE_EQ(spec.training.optimizer.beta2, 0.95);
  EXPECT_EQ(spec.training.scheduler.type, SchedulerType::kCosine);
  EXPECT_EQ(spec.sharding.zero_stage, 3);
  EXPECT_EQ(spec.sharding.backend, CommBackend::kMpi);
  EXPECT_EQ(spec.GradientAccumulation(4), 4);  // 64 / (4 x 4)
  EXPECT_FALSE(spec.data.shuffle);
}

TEST_F(JobSpecTest, ResolvedYamlReadsBackToTheSameSpec) {
  const JobSpec spec = Parse(std::string(kMinimal) + "training: {epochs: 3, optimizer: {lr: 1.0e-3}}\n");
  const JobSpec again = ParseJobSpec(JobSpecToYaml(spec), "job.yaml", "/");
  EXPECT_EQ(JobSpecToYaml(again), JobSpecToYaml(spec));
  EXPECT_EQ(again.training.epochs, 3);
  EXPECT_DOUBLE_EQ(again.training.optimizer.lr, 1e-3);
  EXPECT_EQ(again.model.path, spec.model.path);
}

TEST_F(JobSpecTest, UnknownKeyNamesPathLineColumnAndSuggestion) {
  ExpectProblem(std::string(kMinimal) + "training:\n  epoch: 3\n",
                {"training.epoch (line 6, column 3)", "unknown key 'epoch'", "did you mean 'epochs'"});
}

TEST_F(JobSpecTest, UnknownTopLevelSectionWithoutCloseMatchListsTheKeys) {
  ExpectProblem(std::string(kMinimal) + "hyperparameters: {}\n",
                {"hyperparameters (line 5, column 1)", "expected one of"});
}

TEST_F(JobSpecTest, WrongTypes) {
  ExpectProblem(std::string(kMinimal) + "training: {epochs: three}\n",
                {"training.epochs (line 5, column 20)", "expected an integer, got 'three'"});
  ExpectProblem(std::string(kMinimal) + "training: {optimizer: {lr: fast}}\n",
                {"training.optimizer.lr", "expected a number"});
  ExpectProblem(std::string(kMinimal) + "data2: 1\n", {"data2", "did you mean 'data'"});
  ExpectProblem(std::string(kMinimal) + "training: [1, 2]\n",
                {"training (line 5, column 11)", "expected a mapping, got a list"});
  ExpectProblem(std::string(kMinimal) + "sharding: {zero_stage: [3]}\n",
                {"sharding.zero_stage", "expected an integer, got a list"});
}

TEST_F(JobSpecTest, OutOfRangeValues) {
  ExpectProblem(std::string(kMinimal) + "sharding: {zero_stage: 4}\n",
                {"sharding.zero_stage", "must be in [0, 3], got 4"});
  ExpectProblem(std::string(kMinimal) + "training: {micro_batch_size: 0}\n",
                {"training.micro_batch_size", "must be >= 1, got 0"});
  ExpectProblem(std::string(kMinimal) + "training: {optimizer: {lr: 0}}\n", {"training.optimizer.lr", "must be in (0"});
  ExpectProblem(std::string(kMinimal) + "training: {optimizer: {beta2: 1.0}}\n",
                {"training.optimizer.beta2", "must be in [0, 1)"});
  ExpectProblem(std::string(kMinimal) + "training: {seed: -1}\n", {"training.seed", "non-negative integer"});
}

TEST_F(JobSpecTest, EnumTypoGetsSuggestion) {
  ExpectProblem(
      std::string(kMinimal) + "training: {scheduler: {type: cosin}}\n",
      {"training.scheduler.type", "'cosin' is not one of: constant, linear, cosine", "did you mean 'cosine'"});
}

TEST_F(JobSpecTest, InconsistentBatchSizesPrintTheNumbers) {
  ExpectProblem(std::string(kMinimal) +
                    "training: {micro_batch_size: 3, global_batch_size: 64}\nresources: {ranks_per_node: 4}\n",
                {"training.global_batch_size", "64 is not divisible by micro_batch_size 3 x data-parallel ranks 4"});
}

TEST_F(JobSpecTest, WorldProblemsPrintTheNumbersForAnyRankCount) {
  const JobSpec spec =
      Parse(std::string(kMinimal) +
            "training: {micro_batch_size: 2, global_batch_size: 16}\nsharding: {shard_group_size: 4}\n");
  EXPECT_TRUE(ProblemsForWorld(spec, 8).empty());
  const std::vector<SpecProblem> problems = ProblemsForWorld(spec, 3);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].ToString(),
            "training.global_batch_size: 16 is not divisible by micro_batch_size 2 x data-parallel ranks 3");
  EXPECT_EQ(problems[1].ToString(), "sharding.shard_group_size: 4 does not divide the 3 ranks");
  try {
    RequireFitsWorld(spec, 3);
    ADD_FAILURE() << "expected a SpecError";
  } catch (const SpecError& e) {
    EXPECT_EQ(e.problems(), (std::vector<std::string>{problems[0].ToString(), problems[1].ToString()}));
  }
  // A spec that names no resources is held only to what every world needs (8 is a micro-batch multiple).
  EXPECT_TRUE(ProblemsForAnyWorld(spec).empty());
}

TEST_F(JobSpecTest, AFinishedRunIsNamedWithItsDirectory) {
  EXPECT_FALSE(FinishedRunProblem(dir_ / "run").has_value());
  fs::create_directories(dir_ / "run" / "final");
  const auto problem = FinishedRunProblem(dir_ / "run");
  ASSERT_TRUE(problem.has_value());
  EXPECT_NE(problem->find((dir_ / "run").string() + " holds a finished run (final/)"), std::string::npos) << *problem;
}

TEST_F(JobSpecTest, EarlyStoppingAcceptsTheFiguresTheTasksEvaluationReports) {
  const std::string validated =
      "name: x\nmodel: {path: model}\noutput: {dir: out}\n"
      "data: {train: data/train.jsonl, format: tokens, validation_split: 0.5}\n";
  const JobSpec spec = Parse(validated + "training: {early_stopping: {patience: 2, metric: token_accuracy}}\n");
  EXPECT_EQ(spec.training.early_stopping.metric, "token_accuracy");
  EXPECT_FALSE(spec.training.early_stopping.Minimizes());
  EXPECT_TRUE(Parse(validated + "training: {early_stopping: {patience: 2, metric: perplexity}}\n")
                  .training.early_stopping.Minimizes());
  ExpectProblem(validated + "training: {early_stopping: {patience: 2, metric: accuracy}}\n",
                {"training.early_stopping.metric (line 5, column 50)",
                 "'accuracy' is not a metric of a causal_lm evaluation; expected one of: val_loss, perplexity, "
                 "token_accuracy"});
  ExpectProblem(validated + "training: {early_stopping: {patience: 2, metric: val_tokens}}\n",
                {"training.early_stopping.metric", "'val_tokens' is not a metric"});
}

TEST_F(JobSpecTest, MissingRequiredKeys) {
  const auto problems = Problems("model: {dtype: fp32}\n");
  std::string all;
  for (const auto& p : problems) all += p + "\n";
  EXPECT_NE(all.find("name"), std::string::npos) << all;
  EXPECT_NE(all.find("model.path"), std::string::npos) << all;
  EXPECT_NE(all.find("data.train"), std::string::npos) << all;
  EXPECT_NE(all.find("data.format (line 1, column 1): is required (one of: chat,"), std::string::npos) << all;
  EXPECT_NE(all.find("output.dir"), std::string::npos) << all;
}

TEST_F(JobSpecTest, MissingFiles) {
  ExpectProblem(R"(name: x
model: {path: nowhere}
data: {train: data/train.jsonl, format: tokens}
output: {dir: out}
)",
                {"model.path (line 2, column 15)", "nowhere' is not a directory"});
  ExpectProblem(R"(name: x
model: {path: data}
data: {train: data/train.jsonl, format: tokens}
output: {dir: out}
)",
                {"model.path", "has no config.json"});
  ExpectProblem(R"(name: x
model: {path: model}
data: {train: data/missing.jsonl, format: tokens}
output: {dir: out}
)",
                {"data.train (line 3, column 15)", "missing.jsonl' is not a file"});
}

TEST_F(JobSpecTest, AllProblemsAreReportedAtOnce) {
  const auto problems = Problems(std::string(kMinimal) + "training: {epochs: 0, grad_clip: -1, warmup: 3}\n");
  EXPECT_EQ(problems.size(), 3u);
}

TEST_F(JobSpecTest, CrossFieldChecks) {
  ExpectProblem(std::string(kMinimal) + "output: {dir: elsewhere}\n",
                {"output (line 5, column 1)", "duplicate key 'output' (first at line 4)"});
  ExpectProblem(R"(name: x
model: {path: model}
data: {train: data/train.jsonl, validation: data/train.jsonl, validation_split: 0.1, format: tokens}
output: {dir: out}
)",
                {"data.validation_split", "either data.validation or data.validation_split"});
  ExpectProblem(R"(name: x
model: {path: model}
data: {train: data/train.jsonl, format: tokens}
output: {dir: out, export: [peft]}
)",
                {"output.export", "method.type is 'full'"});
  ExpectProblem(std::string(kMinimal) + "sharding: {shard_group_size: 3}\nresources: {ranks_per_node: 4}\n",
                {"sharding.shard_group_size", "3 does not divide the 4 ranks"});
  ExpectProblem(std::string(kMinimal) + "training: {max_steps: 5, scheduler: {warmup_steps: 10}}\n",
                {"warmup_steps", "10 exceeds training.max_steps 5"});
}

TEST_F(JobSpecTest, ListsRefuseDuplicates) {
  ExpectProblem(
      "name: x\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens}\n"
      "output: {dir: out, export: [hf, hf]}\n",
      {"output.export", "'hf' is listed twice"});
}

TEST_F(JobSpecTest, DedupAndBalance) {
  const std::string head = "name: x\nmodel: {path: model}\noutput: {dir: out}\n";
  EXPECT_EQ(Parse(head + "data: {train: data/train.jsonl, format: tokens}\n").data.dedup.mode, DedupMode::kNone);
  EXPECT_EQ(Parse(head + "data: {train: data/train.jsonl, format: tokens, dedup: exact}\n").data.dedup.mode,
            DedupMode::kExact);
  // A mapping means near duplicates unless it says otherwise; it round-trips through job.yaml.
  const JobSpec mapped = Parse(
      head + "data: {train: data/train.jsonl, format: tokens, dedup: {threshold: 0.9, shingle: words, ngram: 3}}\n");
  EXPECT_EQ(mapped.data.dedup.mode, DedupMode::kNear);
  EXPECT_DOUBLE_EQ(mapped.data.dedup.similarity.threshold, 0.9);
  EXPECT_EQ(mapped.data.dedup.similarity.unit, ShingleUnit::kWords);
  EXPECT_EQ(mapped.data.dedup.similarity.ngram, 3);
  const JobSpec again = ParseJobSpec(JobSpecToYaml(mapped), "job.yaml", "/");
  EXPECT_EQ(again.data.dedup.mode, DedupMode::kNear);
  EXPECT_EQ(again.data.dedup.similarity.ngram, 3);
  EXPECT_EQ(Parse(head + "data: {train: data/train.jsonl, format: tokens, dedup: {mode: exact}}\n").data.dedup.mode,
            DedupMode::kExact);
  ExpectProblem(head + "data: {train: data/train.jsonl, format: tokens, dedup: nearly}\n",
                {"data.dedup", "did you mean 'near'"});
  ExpectProblem(head + "data: {train: data/train.jsonl, format: tokens, dedup: {threshold: 0}}\n",
                {"data.dedup.threshold", "0"});
  ExpectProblem(head + "data: {train: data/train.jsonl, format: tokens, dedup: [near]}\n",
                {"data.dedup", "expected a mapping"});
  ExpectProblem(head + "data: {train: data/train.jsonl, format: tokens, dedup: {mode: near, shingels: words}}\n",
                {"data.dedup.shingels", "did you mean 'shingle'"});
  const JobSpec augmented = Parse(
      "name: x\nmodel: {path: model, task: sequence_classification}\noutput: {dir: out}\n"
      "data: {train: data/train.jsonl, format: classification, augment: {copies: 4, random_swap: 0.3}}\n");
  EXPECT_EQ(augmented.data.augment.copies, 4);
  EXPECT_DOUBLE_EQ(augmented.data.augment.random_swap, 0.3);
  EXPECT_DOUBLE_EQ(augmented.data.augment.random_deletion, 0.1);
  EXPECT_EQ(ParseJobSpec(JobSpecToYaml(augmented), "job.yaml", "/").data.augment.copies, 4);
  ExpectProblem(head + "data: {train: data/train.jsonl, format: text, augment: {copies: 2}}\n",
                {"data.augment.copies", "classification and ner"});
  ExpectProblem(head + "data: {train: data/train.jsonl, format: tokens, augment: {random_swap: 2}}\n",
                {"data.augment.random_swap", "[0, 1]"});
  ExpectProblem(head + "data: {train: data/train.jsonl, format: text, balance: oversample}\n",
                {"data.balance", "a language model has none"});
  ExpectProblem(
      "name: x\nmodel: {path: model, task: token_classification}\noutput: {dir: out}\n"
      "data: {train: data/train.jsonl, format: ner, balance: oversample}\n",
      {"data.balance", "use class_weights for ner"});
}

TEST_F(JobSpecTest, MultiTaskData) {
  const JobSpec spec = Parse(R"(name: x
model: {path: model}
data:
  format: chat
  mixing_temperature: 2
  tasks:
    - {name: qa, train: data/train.jsonl, weight: 2}
    - {name: code, train: data/train.jsonl, format: tokens}
output: {dir: out}
)");
  ASSERT_EQ(spec.data.tasks.size(), 2u);
  EXPECT_EQ(spec.data.tasks[0].format, DataFormat::kChat);
  EXPECT_EQ(spec.data.tasks[1].format, DataFormat::kTokens);
  EXPECT_DOUBLE_EQ(spec.data.tasks[0].weight, 2.0);
  EXPECT_EQ(ParseJobSpec(JobSpecToYaml(spec), "job.yaml", "/").data.tasks.size(), 2u);
  ExpectProblem(
      "name: x\nmodel: {path: model}\noutput: {dir: o}\ndata:\n  format: chat\n  train: data/train.jsonl\n"
      "  tasks: [{name: a, train: data/train.jsonl}]\n",
      {"data.tasks", "either data.train or data.tasks"});
  ExpectProblem(
      "name: x\nmodel: {path: model}\noutput: {dir: o}\ndata:\n  format: chat\n"
      "  tasks: [{name: a, train: data/train.jsonl}, {name: a, train: data/train.jsonl}]\n",
      {"data.tasks[1].name", "task 'a' is listed twice"});
  ExpectProblem("name: x\nmodel: {path: model}\noutput: {dir: o}\ndata:\n  format: chat\n  tasks: [{name: a}]\n",
                {"data.tasks[0].train", "is required"});
}

TEST_F(JobSpecTest, MethodSectionsParseAndRoundTrip) {
  const std::string base =
      "name: x\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens}\n"
      "output: {dir: out}\n";
  const JobSpec lora = Parse(base + R"(method:
  type: dora
  lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj], use_rslora: true}
  modules_to_save: [lm_head]
)");
  EXPECT_EQ(lora.method.type, MethodType::kDora);
  EXPECT_EQ(lora.method.lora.r, 16);
  EXPECT_DOUBLE_EQ(lora.method.lora.alpha, 32);
  EXPECT_EQ(lora.method.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_FALSE(lora.method.lora.target_is_pattern);
  EXPECT_TRUE(lora.method.lora.use_rslora);
  EXPECT_EQ(lora.method.modules_to_save, (std::vector<std::string>{"lm_head"}));
  // A PEFT method exports its adapter unless output.export says otherwise.
  EXPECT_EQ(lora.output.export_formats, (std::vector<ExportFormat>{ExportFormat::kPeft}));

  const JobSpec pattern = Parse(base + "method: {type: lora, lora: {target_modules: 'model\\.layers\\..*_proj'}}\n");
  EXPECT_TRUE(pattern.method.lora.target_is_pattern);
  EXPECT_EQ(pattern.method.lora.target_modules[0], "model\\.layers\\..*_proj");
  for (const char* method :
       {"{type: ia3, ia3: {target_modules: [k_proj, down_proj], feedforward_modules: [down_proj]}}",
        "{type: adapter, adapter: {bottleneck: 32, placement: houlsby, activation: gelu}}",
        "{type: prefix, prefix: {num_virtual_tokens: 10, projection: true, encoder_hidden_size: 64}}",
        "{type: prompt, prompt: {num_virtual_tokens: 12}}", "{type: dora, lora: {target_modules: all-linear}}",
        "{type: dora, lora: {target_modules: 'model\\.layers\\..*_proj'}}"}) {
    SCOPED_TRACE(method);
    const JobSpec spec = Parse(base + "method: " + method + "\n");
    const JobSpec again = ParseJobSpec(JobSpecToYaml(spec), "job.yaml", "/");
    EXPECT_EQ(JobSpecToYaml(again), JobSpecToYaml(spec));
  }
  EXPECT_EQ(Parse(base + "method: {type: adapter, adapter: {placement: houlsby}}\n").method.adapter.placement,
            AdapterPlacement::kHoulsby);
}

TEST_F(JobSpecTest, MethodProblemsNameTheirField) {
  const std::string base = "name: x\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens}\n";
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, ia3: {target_modules: [k_proj]}}\n",
                {"method.ia3", "is for another method than method.type 'lora'"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {r: 0}}\n", {"method.lora.r", "must be in [1"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {rank: 8}}\n",
                {"method.lora.rank", "unknown key 'rank'"});
  ExpectProblem(
      "name: x\nmodel: {path: model, task: sequence_classification}\ndata: {train: data/train.jsonl, "
      "format: classification, "
      "packing: true}\noutput: {dir: out}\n",
      {"data.packing", "applies to causal_lm"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: []}}\n",
                {"method.lora.target_modules", "is empty", "leave the key out for the model's defaults"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: '(unclosed'}}\n",
                {"method.lora.target_modules", "not a valid regular expression"});
  // std::regex reads "\1111111111111111111" into a long that overflows (undefined behaviour, found by
  // fuzz_job_spec), and compiles a long pattern with deep recursion: both are bounded before it runs.
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: 'a(b)\\1111111111111'}}\n",
                {"method.lora.target_modules", "a number of more than 4 digits"});
  ExpectProblem(
      base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: '" + std::string(600, 'a') + "'}}\n",
      {"method.lora.target_modules", "a pattern of 600 characters; at most 512"});
  EXPECT_EQ(Parse(base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: "
                         "'.*layers\\.(0|11)\\.self_attn\\.q_proj'}}\n")
                .method.lora.target_modules.size(),
            1u);
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, lora: {target_modules: [q_proj, {x: 1}]}}\n",
                {"method.lora.target_modules[1]", "expected a non-empty string"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: full, modules_to_save: [lm_head]}\n",
                {"method.modules_to_save", "not 'full'"});
  ExpectProblem(base + "output: {dir: out, export: [hf]}\nmethod: {type: prefix}\n",
                {"output.export", "method 'prefix' cannot be"});
  ExpectProblem(
      "name: x\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens, packing: true}\n"
      "output: {dir: out}\nmethod: {type: prompt}\n",
      {"data.packing", "set packing: false"});
  ExpectProblem(base + "output: {dir: out}\nmethod: {type: lora, init_from: data}\n",
                {"method.init_from", "has no adapter_config.json"});
}

TEST_F(JobSpecTest, HostileNamesAreRejected) {
  for (const std::string name : {"\"x; rm -rf /\"", "UPPER", "-leading", "a_b", "\"$(id)\""}) {
    ExpectProblem("name: " + name +
                      "\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens}\noutput: {dir: out}\n",
                  {"name (line 1, column 7)", "a-z, 0-9 and '-'"});
  }
  ExpectProblem("name: " + std::string(65, 'a') +
                    "\nmodel: {path: model}\ndata: {train: data/train.jsonl, format: tokens}\noutput: {dir: o}\n",
                {"name", "1 to 64 characters"});
}

TEST_F(JobSpecTest, SyntaxErrorsAndNonMappingsNameTheLine) {
  ExpectProblem("name: x\nmodel: {path: model\n", {"line 3", "not valid YAML"});
  // yaml-cpp reads any bytes and emits an invalid one as U+FFFD: the spec the worker read would differ
  // from the one admitted (found by fuzz_job_spec's round trip).
  ExpectProblem("name: x\nmodel: {path: \"m\xff\"}\n", {"(line 2, column 17)", "not UTF-8 text (byte 0xff)"});
  ExpectProblem("\xc3(", {"(line 1, column 1)", "not UTF-8 text (byte 0xc3)"});
  ExpectProblem("- just\n- a list\n", {"expected a mapping of sections"});
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

// file:ID data paths: resolved by SpecOptions::resolve_file (the server's, per tenant) before the
// file checks; refused with the key and line where nothing resolves them.
TEST_F(JobSpecTest, UploadedFilesResolveThroughTheOptionsHook) {
  const std::string yaml = R"(name: up
model: {path: model}
data: {train: "file:file-0123", validation: data/train.jsonl, format: tokens}
output: {dir: runs/up}
)";
  SpecOptions options;
  options.resolve_file = [&](const std::string& id) -> std::optional<std::string> {
    if (id == "file-0123") return (dir_.path() / "data" / "train.jsonl").string();
    return std::nullopt;
  };
  const JobSpec spec = ParseJobSpec(yaml, "job.yaml", dir_.path(), options);
  EXPECT_EQ(spec.data.train, (dir_.path() / "data" / "train.jsonl").string());
  EXPECT_EQ(JobSpecToYaml(spec).find("file:"), std::string::npos) << "the stored spec names the path";

  ExpectProblem(yaml, {"data.train (line 3", "only shardtune-server resolves"});
  std::string other = yaml;
  other.replace(other.find("file-0123"), 9, "file-9999");
  try {
    ParseJobSpec(other, "job.yaml", dir_.path(), options);
    ADD_FAILURE() << "an unknown file id was accepted";
  } catch (const SpecError& e) {
    ASSERT_EQ(e.problems().size(), 1u);
    EXPECT_NE(e.problems()[0].find("no uploaded file 'file-9999'"), std::string::npos) << e.problems()[0];
  }
}

TEST_F(JobSpecTest, QuantizationIsReadCheckedAndWrittenBack) {
  const std::string lora = R"(name: qlora
model:
  path: model
  quantization: {type: nf4, double_quant: true, block_size: 128, compute_dtype: bf16}
data: {train: data/train.jsonl, format: tokens}
method: {type: lora}
output: {dir: runs/qlora}
)";
  const JobSpec spec = Parse(lora);
  EXPECT_EQ(spec.model.quantization.type, QuantizationType::kNf4);
  EXPECT_EQ(spec.model.quantization.block_size, 128);
  EXPECT_TRUE(spec.model.quantization.double_quant);
  EXPECT_EQ(spec.model.dtype, ComputeDType::kBf16);  // compute_dtype sets the model's dtype
  const JobSpec again = ParseJobSpec(JobSpecToYaml(spec), "job.yaml", "/");
  EXPECT_EQ(again.model.quantization.type, QuantizationType::kNf4);
  EXPECT_EQ(again.model.quantization.block_size, 128);
  EXPECT_EQ(Parse(kMinimal).model.quantization.type, QuantizationType::kNone);

  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = lora;
    text.replace(text.find(from), from.size(), to);
    return text;
  };
  ExpectProblem(with("type: nf4", "type: int4"), {"model.quantization.type", "nf4", "fp4"});
  ExpectProblem(with("block_size: 128", "block_size: 96"), {"model.quantization.block_size", "96", "64, 128"});
  ExpectProblem(with("block_size: 128", "block_size: 8192"), {"model.quantization.block_size", "8192"});
  ExpectProblem(with("double_quant", "double_quantization"), {"double_quantization", "double_quant, type"});
  ExpectProblem(with("{type: lora}", "{type: full}"), {"model.quantization", "method.type is 'full'"});
  ExpectProblem(with("  path: model\n", "  path: model\n  dtype: fp32\n"),
                {"model.quantization.compute_dtype", "'bf16' but model.dtype is 'fp32'"});
}

}  // namespace
}  // namespace shardtune
