// The classification heads on many ranks, for a Llama and a BERT: training and evaluation at
// ZeRO stages 2 and 3 (and BERT with LoRA and with prefix tuning at stage 3) equal the
// single-process run: the losses at every step, and the evaluation's metrics (accuracy and
// confusion matrix; entity precision, recall and F1), every rank's share of the validation set
// counted once (the validation sets are sized so that ranks hold different numbers).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "classification_tasks.h"
#include "run_comparison.h"
#include "worker/trainer.h"
#include "world.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::World;

class ClassifierZeroTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(testing::SharedScratchDir("classifier-zero"));
    if (World().rank() == 0) {
      testing::WriteByteLevelModel(*dir_ / "base", 3);
      testing::WriteTinyBert(*dir_ / "bert", 3);
      testing::WriteText(*dir_ / "sentiment.jsonl", testing::SentimentData(64, 1));
      testing::WriteText(*dir_ / "sentiment-val.jsonl", testing::SentimentData(23, 2));
      testing::WriteText(*dir_ / "ner.jsonl", testing::NerData(64, 3));
      testing::WriteText(*dir_ / "ner-val.jsonl", testing::NerData(23, 4));
      // Unbalanced sentiment (every positive example, a third of the negative ones), with the
      // many repeats short sentences of few words make: for data.balance and data.dedup.
      std::istringstream all(testing::SentimentData(96, 5));
      std::string line, skewed;
      for (int n = 0; std::getline(all, line); ++n) {
        if (line.find("\"positive\"") != std::string::npos || n % 3 == 1) skewed += line + "\n";
      }
      testing::WriteText(*dir_ / "skew.jsonl", skewed);
      testing::WriteText(*dir_ / "skew-val.jsonl", testing::SentimentData(23, 2));
    }
    World().Barrier(CollectiveTag{"setup"});
  }
  static void TearDownTestSuite() {
    World().Barrier(CollectiveTag{"teardown"});
    if (World().rank() == 0) fs::remove_all(*dir_);
    delete dir_;
  }

  // `data` names the data files (DATA.jsonl, DATA-val.jsonl; default: the task's) and `extra`
  // adds keys to the data section (", balance: class_weights").
  static JobSpec Spec(const std::string& model, const std::string& task, const std::string& out, int stage,
                      int64_t global, const std::string& method = "{type: full}", std::string data = "",
                      const std::string& extra = "") {
    const bool ner = task == "token_classification";
    if (data.empty()) data = ner ? "ner" : "sentiment";
    const std::string yaml = fmt::format(
        "name: t\nmodel: {{path: {}, task: {}}}\nmethod: {}\n"
        "data: {{train: {}.jsonl, validation: {}-val.jsonl, format: {}{}}}\n"
        "output: {{dir: {}}}\n"
        "training: {{max_steps: 8, micro_batch_size: 2, global_batch_size: {}, eval_every: 4, "
        "optimizer: {{lr: 3.0e-3}}}}\nsharding: {{zero_stage: {}}}\n",
        model, task, method, data, data, ner ? "ner" : "classification", extra, out, global, stage);
    return ParseJobSpec(yaml, "job.yaml", *dir_);
  }

  static fs::path* dir_;
};

fs::path* ClassifierZeroTest::dir_ = nullptr;

TEST_F(ClassifierZeroTest, ShardedTrainingAndEvaluationEqualTheSingleProcessRun) {
  const int n = World().size();
  const int64_t global = 4 * n;  // micro-batch 2, accumulation 2 on every world size
  struct Case {
    std::string model, task, method;
    std::vector<int> stages;
    std::string data = "", extra = "";
  };
  const std::vector<Case> cases = {
      {"base", "sequence_classification", "{type: full}", {2, 3}},
      {"base", "token_classification", "{type: full}", {2, 3}},
      {"bert", "sequence_classification", "{type: full}", {2, 3}},
      {"bert", "token_classification", "{type: full}", {3}},
      {"bert", "sequence_classification", "{type: lora, lora: {r: 4, target_modules: all-linear}}", {3}},
      {"bert", "token_classification", "{type: prefix, prefix: {num_virtual_tokens: 3}}", {3}},
      {"bert", "sequence_classification", "{type: prompt, prompt: {num_virtual_tokens: 2}}", {3}},
      // data.balance and data.dedup: the loss weights and the selected examples are the same on
      // every rank count.
      {"base", "sequence_classification", "{type: full}", {3}, "skew", ", balance: class_weights"},
      {"bert", "token_classification", "{type: full}", {2}, "ner", ", balance: class_weights"},
      {"bert", "sequence_classification", "{type: full}", {2}, "skew", ", balance: oversample, dedup: near"},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    const fs::path reference = *dir_ / fmt::format("ref-{}-{}", c, global);
    if (World().rank() == 0 && !fs::exists(reference / "final"))
      RunTraining(Spec(k.model, k.task, reference.string(), 0, global, k.method, k.data, k.extra));
    World().Barrier(CollectiveTag{"reference"});
    for (int stage : k.stages) {
      SCOPED_TRACE(fmt::format("{} {} {} stage {} np {}", k.model, k.task, k.method, stage, n));
      const fs::path out = *dir_ / fmt::format("run-{}-s{}", c, stage);
      RunTraining(Spec(k.model, k.task, out.string(), stage, global, k.method, k.data, k.extra), World());
      World().Barrier(CollectiveTag{"compare"});
      testing::ExpectSameLosses(out, reference);
      const auto sharded = testing::ReadMetrics(out), single = testing::ReadMetrics(reference);
      int evaluations = 0;
      for (size_t i = 0; i < single.size(); ++i) {
        if (!single[i].contains("val_loss")) continue;
        ++evaluations;
        EXPECT_NEAR(sharded[i]["val_loss"].get<double>(), single[i]["val_loss"].get<double>(), 1e-5);
        for (const char* exact : {"confusion", "val_examples", "per_type"}) {
          if (single[i].contains(exact)) {
            EXPECT_EQ(sharded[i][exact], single[i][exact]) << exact;
          }
        }
        for (const char* metric : {"accuracy", "macro_f1", "entity_f1", "token_accuracy"}) {
          if (single[i].contains(metric)) {
            EXPECT_DOUBLE_EQ(sharded[i][metric], single[i][metric]) << metric;
          }
        }
      }
      EXPECT_EQ(evaluations, 2);
    }
  }
  // The class weights act: the first step's loss (before any update) differs from the unweighted one.
  const fs::path plain = *dir_ / fmt::format("ref-skew-plain-{}", global);
  if (World().rank() == 0) {
    if (!fs::exists(plain / "final"))
      RunTraining(Spec("base", "sequence_classification", plain.string(), 0, global, "{type: full}", "skew"));
    const auto weighted = testing::ReadMetrics(*dir_ / fmt::format("ref-{}-{}", cases.size() - 3, global));
    const auto unweighted = testing::ReadMetrics(plain);
    EXPECT_GT(std::abs(weighted[0]["loss"].get<double>() - unweighted[0]["loss"].get<double>()), 1e-4);
  }
  World().Barrier(CollectiveTag{"weights"});
}

}  // namespace
}  // namespace shardtune
