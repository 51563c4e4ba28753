// The classification heads: their metrics against hand-computed values, and tiny Llamas that
// learn a generated sentiment task and a generated NER task through shardtune's trainer.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "classification_tasks.h"
#include "common/atomic_file.h"
#include "common/job_spec.h"
#include "common/llama_config.h"
#include "common/safetensors.h"
#include "worker/evaluate.h"
#include "worker/models/llama.h"
#include "worker/task_metrics.h"
#include "worker/trainer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(TaskMetrics, ClassificationMetricsFromAConfusionMatrix) {
  // Rows: true class, columns: predicted.
  const ClassificationMetrics m = FromConfusion({5, 1, 0, 2, 3, 1, 0, 0, 4}, 3);
  EXPECT_DOUBLE_EQ(m.accuracy, 12.0 / 16);
  EXPECT_DOUBLE_EQ(m.micro_f1, 12.0 / 16);
  EXPECT_DOUBLE_EQ(m.classes[0].precision, 5.0 / 7);
  EXPECT_DOUBLE_EQ(m.classes[0].recall, 5.0 / 6);
  EXPECT_NEAR(m.classes[0].f1, 10.0 / 13, 1e-12);
  EXPECT_NEAR(m.classes[1].f1, 0.6, 1e-12);
  EXPECT_NEAR(m.classes[2].f1, 8.0 / 9, 1e-12);
  EXPECT_EQ(m.classes[1].support, 6);
  EXPECT_NEAR(m.macro_f1, (10.0 / 13 + 0.6 + 8.0 / 9) / 3, 1e-12);
  // A class never seen nor predicted counts 0 in the macro average (as scikit-learn's default).
  EXPECT_NEAR(FromConfusion({3, 0, 0, 0}, 2).macro_f1, 0.5, 1e-12);
}

TEST(TaskMetrics, EntitiesAreReadAsSeqevalReadsBioTags) {
  const std::vector<Entity> entities = BioEntities({"B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-PER"});
  const std::vector<Entity> expected = {{"PER", 0, 2}, {"LOC", 3, 4}, {"LOC", 4, 5}, {"LOC", 5, 6}, {"PER", 6, 7}};
  EXPECT_EQ(entities, expected);
  EXPECT_EQ(EntityTypes({"O", "B-PER", "I-PER", "B-LOC"}), (std::vector<std::string>{"LOC", "PER"}));
  // Exact span and type: a person cut short is a miss, and a false alarm.
  std::vector<int64_t> counts(6, 0);
  CountEntities({"B-PER", "I-PER", "O", "B-LOC"}, {"B-PER", "O", "O", "B-LOC"}, {"LOC", "PER"}, counts);
  EXPECT_EQ(counts, (std::vector<int64_t>{1, 1, 1, 0, 1, 1}));
  const EntityMetrics m = FromEntityCounts(counts, 2);
  EXPECT_DOUBLE_EQ(m.precision, 0.5);
  EXPECT_DOUBLE_EQ(m.recall, 0.5);
  EXPECT_DOUBLE_EQ(m.f1, 0.5);
  EXPECT_DOUBLE_EQ(m.types[0].f1, 1.0);
  EXPECT_DOUBLE_EQ(m.types[1].f1, 0.0);
}

TEST(TaskLosses, LabelSmoothingMixesTheTargetWithTheUniformDistribution) {
  at::manual_seed(3);
  const at::Tensor logits = at::randn({2, 4, 5});
  const at::Tensor tags = at::tensor(std::vector<int64_t>{1, -100, 4, 0, 2, 3, -100, 1}).view({2, 4});
  const double e = 0.2;
  const at::Tensor log_p = at::log_softmax(logits, -1);
  double expected = 0;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t t = 0; t < 4; ++t) {
      const int64_t y = tags[b][t].item<int64_t>();
      if (y == -100) continue;
      expected += -(1 - e) * log_p[b][t][y].item<double>() - e * log_p[b][t].mean().item<double>();
    }
  }
  const LossSum loss = TokenClassificationLossSum(logits, tags, e);
  EXPECT_NEAR(loss.sum.item<double>(), expected, 1e-5);
  EXPECT_EQ(loss.tokens, 6);
  // The pooled position is each sequence's last: here 2 and 3 of 4.
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 1, 1, 0, 1, 1, 1, 1}).view({2, 4});
  const at::Tensor pooled = PooledLogits(logits, mask);
  EXPECT_TRUE(at::equal(pooled[0], logits[0][2]));
  EXPECT_TRUE(at::equal(pooled[1], logits[1][3]));
}

TEST(TaskLosses, AttentionDropoutActsInTrainingOnly) {
  testing::ScratchDir dir;
  testing::WriteTinyModel(dir / "base", testing::TinyConfig(), 1);
  std::string text;
  for (int n = 0; n < 16; ++n) text += "{\"input_ids\": [1, 5, 6, 7, 8, 9, 10, 11]}\n";
  testing::WriteText(dir / "data.jsonl", text);
  auto first_loss = [&](const std::string& name, const std::string& extra) {
    RunTraining(
        ParseJobSpec("name: t\nmodel: {path: base}\ndata: {train: data.jsonl, format: tokens}\n"
                     "output: {dir: " +
                         name + "}\ntraining: {max_steps: 1, micro_batch_size: 4" + extra + "}\n",
                     "job.yaml", dir.path()));
    std::ifstream in(dir / name / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {  // the first step's, after the load record
      const json record = json::parse(line);
      if (record.contains("loss")) return record.at("loss").get<double>();
    }
    return -1.0;
  };
  const double plain = first_loss("plain", ""), zero = first_loss("zero", ", attention_dropout: 0.0");
  const double dropped = first_loss("dropped", ", attention_dropout: 0.5");
  EXPECT_EQ(plain, zero);
  EXPECT_NE(plain, dropped);
}

// Expects `shardtune evaluate` to refuse `options` with an Error whose message holds `fragment`.
void ExpectEvaluationRefused(const EvaluateOptions& options, const std::string& fragment) {
  try {
    EvaluateModel(options);
    FAIL() << "evaluated " << options.model << " (adapter " << options.adapter << ") on " << options.data
           << "; expected an error saying '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

class ClassifierTest : public testing::TaskRunTest {
 protected:
  void SetUp() override { testing::WriteByteLevelModel(dir_ / "base"); }

  // Enough steps for a tiny Llama to learn either generated task.
  static constexpr const char* kTraining =
      "training: {max_steps: 150, micro_batch_size: 16, eval_every: 50, optimizer: {lr: 3.0e-3}}\n";
};

TEST_F(ClassifierTest, ALlamaLearnsSentimentAndExportsAHuggingFaceClassifier) {
  WriteSentimentData();
  const json eval = TrainClassifier("sequence_classification", kTraining);
  EXPECT_GE(eval.at("accuracy").get<double>(), 0.95) << eval.dump();
  EXPECT_GE(eval.at("macro_f1").get<double>(), 0.95) << eval.dump();
  EXPECT_EQ(eval.at("val_examples").get<int64_t>(), 60);
  int64_t counted = 0;
  for (const auto& row : eval.at("confusion"))
    for (const auto& c : row) counted += c.get<int64_t>();
  EXPECT_EQ(counted, 60);  // every validation example once
  EXPECT_EQ(eval.at("per_class").at("positive").at("support").get<int64_t>(), 30);

  // transformers' layout: the architecture, the classes, and score.weight (no lm_head).
  const json config = json::parse(ReadFile(dir_ / "run" / "final" / "config.json"));
  EXPECT_EQ(config.at("architectures")[0], "LlamaForSequenceClassification");
  EXPECT_EQ(config.at("id2label").at("0"), "negative");
  EXPECT_EQ(config.at("label2id").at("positive"), 1);
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::Open(dir_ / "run" / "final");
  ASSERT_TRUE(weights.Find("score.weight").has_value());
  EXPECT_EQ(weights.Find("score.weight")->info->shape, (std::vector<int64_t>{2, 32}));
  EXPECT_FALSE(weights.Find("lm_head.weight").has_value());
  const LlamaConfig exported = LlamaConfig::Load(dir_ / "run" / "final");
  EXPECT_EQ(exported.task, ModelTask::kSequenceClassification);
  EXPECT_EQ(exported.label_names, (std::vector<std::string>{"negative", "positive"}));

  // `shardtune evaluate` on the exported model sees what the last evaluation saw.
  EvaluateOptions options = ExportedModel("val.jsonl");
  options.batch_size = 7;
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("examples"), 60);
  EXPECT_EQ(evaluated.at("confusion"), eval.at("confusion"));
  EXPECT_DOUBLE_EQ(evaluated.at("accuracy").get<double>(), eval.at("accuracy").get<double>());
  EXPECT_NEAR(evaluated.at("val_loss").get<double>(), eval.at("val_loss").get<double>(), 1e-5);
}

// Real and synthetic files of one classifier, mixed by weight (data.tasks): one label set, from
// model.labels; each file's examples drawn by its weight; validation pooled over the tasks.
TEST_F(ClassifierTest, AClassifierMixesItsFilesByWeight) {
  WriteSentimentData();
  testing::WriteText(dir_ / "extra.jsonl", testing::SentimentData(40, 9));
  const TrainingSummary summary = RunTraining(Spec(
      "task: sequence_classification, labels: [negative, positive]}\n"
      "data: {format: classification, tasks: [{name: real, train: train.jsonl, validation: val.jsonl, weight: 3},\n"
      "                                       {name: synthetic, train: extra.jsonl, weight: 1}]}\n" +
      std::string(kTraining) + "output: {dir: run}\n"));
  EXPECT_TRUE(summary.finished);
  const json eval = LastEvaluation("run");
  EXPECT_EQ(eval.at("val_examples").get<int64_t>(), 60);
  EXPECT_GE(eval.at("accuracy").get<double>(), 0.9) << eval.dump();
  const auto problem = [&](const std::string& body) {
    try {
      Spec(body);
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(problem("task: sequence_classification}\ndata: {format: classification, tasks: [{name: a, train: "
                    "train.jsonl}]}\noutput: {dir: x}\n")
                .find("give it as model.labels"),
            std::string::npos);
  EXPECT_NE(problem("task: sequence_classification, labels: [negative, positive]}\ndata: {format: classification, "
                    "balance: class_weights, tasks: [{name: a, train: train.jsonl}]}\noutput: {dir: x}\n")
                .find("class_weights counts one training file"),
            std::string::npos);
}

TEST_F(ClassifierTest, ALlamaLearnsNamedEntities) {
  WriteNerData();
  const json eval = TrainClassifier("token_classification", kTraining);
  EXPECT_GE(eval.at("entity_f1").get<double>(), 0.9) << eval.dump();
  EXPECT_TRUE(eval.at("per_type").contains("PER"));
  EXPECT_TRUE(eval.at("per_type").contains("LOC"));
  const json config = json::parse(ReadFile(dir_ / "run" / "final" / "config.json"));
  EXPECT_EQ(config.at("architectures")[0], "LlamaForTokenClassification");
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::Open(dir_ / "run" / "final");
  EXPECT_TRUE(weights.Find("score.bias").has_value());

  EvaluateOptions options = ExportedModel("ner-val.jsonl");
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("per_type"), eval.at("per_type"));
  EXPECT_DOUBLE_EQ(evaluated.at("entity_f1").get<double>(), eval.at("entity_f1").get<double>());
  EXPECT_NEAR(evaluated.at("val_loss").get<double>(), eval.at("val_loss").get<double>(), 1e-5);
  options.format = "classification";  // a token classifier on classification data
  ExpectEvaluationRefused(options, "does not fit this model's task");
}

TEST_F(ClassifierTest, LoraTrainsTheHeadInFullAndExportsAnAdapterOfTheTaskType) {
  testing::WriteText(dir_ / "train.jsonl", testing::SentimentData(240, 1));
  const TrainingSummary summary = RunTraining(
      Spec("task: sequence_classification}\nmethod: {type: lora, lora: {r: 4, target_modules: [q_proj, v_proj]}}\n"
           "data: {train: train.jsonl, validation_split: 0.2, format: classification}\n"
           "training: {max_steps: 150, micro_batch_size: 16, eval_every: 50, optimizer: {lr: 3.0e-3}}\n"
           "output: {dir: run}\n"));
  EXPECT_TRUE(summary.finished);
  EXPECT_GE(LastEvaluation("run").at("accuracy").get<double>(), 0.9) << LastEvaluation("run").dump();
  const json adapter = json::parse(ReadFile(dir_ / "run" / "final" / "adapter_config.json"));
  EXPECT_EQ(adapter.at("task_type"), "SEQ_CLS");
  EXPECT_EQ(adapter.at("modules_to_save"), json::array({"score"}));
  const std::string job = ReadFile(dir_ / "run" / "job.yaml");
  EXPECT_NE(job.find("labels: [negative, positive]"), std::string::npos) << job;

  // evaluate: the base model with the adapter, its classes from the run's job.yaml.
  EvaluateOptions options = ExportedAdapter("train.jsonl");
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("examples"), 240);
  EXPECT_GE(evaluated.at("accuracy").get<double>(), 0.9) << evaluated.dump();
  fs::copy(dir_ / "run" / "final", dir_ / "moved");
  options.adapter = dir_ / "moved";  // a classifier adapter without its run
  ExpectEvaluationRefused(options, "holds no class names");
}

TEST_F(ClassifierTest, TaskAndDataFormatMustAgree) {
  testing::WriteText(dir_ / "train.jsonl", testing::SentimentData(8, 1));
  try {
    Spec("task: token_classification}\ndata: {train: train.jsonl, format: classification}\noutput: {dir: run}\n");
    FAIL() << "accepted";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("data.format"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("does not fit model.task 'token_classification'"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

}  // namespace
}  // namespace shardtune
