// BERT: the encoder's outputs against a reference written out op by op from transformers'
// modeling_bert.py formulas (no shardtune model code), and tiny BERTs that learn the generated
// sentiment and NER tasks through shardtune's trainer, in full and with LoRA, and export Hugging
// Face classifiers.
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "classification_tasks.h"
#include "common/atomic_file.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "sharding/bert_layout.h"
#include "worker/evaluate.h"
#include "worker/inference_model.h"
#include "worker/trainer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

at::Tensor LayerNormReference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const at::Tensor mean = x.mean(-1, /*keepdim=*/true);
  const at::Tensor var = (x - mean).pow(2).mean(-1, /*keepdim=*/true);
  return (x - mean) / at::sqrt(var + eps) * w + b;
}

// BertForSequenceClassification (pooled) or BertForTokenClassification (every token), fp64.
at::Tensor BertReference(const BertConfig& c, const std::function<at::Tensor(const std::string&)>& weight,
                         const at::Tensor& ids, const at::Tensor& types, const at::Tensor& mask) {
  auto w = [&](const std::string& name) { return weight(name).to(at::kDouble); };
  auto dense = [&](const at::Tensor& x, const std::string& module) {
    return at::matmul(x, w(module + ".weight").t()) + w(module + ".bias");
  };
  const int64_t b = ids.size(0), s = ids.size(1), heads = c.num_attention_heads, d = c.hidden_size / heads;
  at::Tensor h =
      w("bert.embeddings.word_embeddings.weight").index_select(0, ids.reshape({-1})).view({b, s, -1}) +
      w("bert.embeddings.position_embeddings.weight").narrow(0, 0, s).unsqueeze(0) +
      w("bert.embeddings.token_type_embeddings.weight").index_select(0, types.reshape({-1})).view({b, s, -1});
  h = LayerNormReference(h, w("bert.embeddings.LayerNorm.weight"), w("bert.embeddings.LayerNorm.bias"),
                         c.layer_norm_eps);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("bert.encoder.layer.{}.", i);
    auto heads_of = [&](const at::Tensor& x) { return x.view({b, s, heads, d}).permute({0, 2, 1, 3}); };
    const at::Tensor q = heads_of(dense(h, p + "attention.self.query"));
    const at::Tensor k = heads_of(dense(h, p + "attention.self.key"));
    const at::Tensor v = heads_of(dense(h, p + "attention.self.value"));
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
    scores = scores.masked_fill(mask.eq(0).view({b, 1, 1, s}), -INFINITY);
    const at::Tensor e = at::exp(scores - std::get<0>(scores.max(-1, /*keepdim=*/true)));
    const at::Tensor context = at::matmul(e / e.sum(-1, /*keepdim=*/true), v).permute({0, 2, 1, 3}).reshape({b, s, -1});
    const at::Tensor attended =
        LayerNormReference(dense(context, p + "attention.output.dense") + h, w(p + "attention.output.LayerNorm.weight"),
                           w(p + "attention.output.LayerNorm.bias"), c.layer_norm_eps);
    const at::Tensor inner = dense(attended, p + "intermediate.dense");
    const at::Tensor gelu = 0.5 * inner * (1 + at::erf(inner / std::sqrt(2.0)));
    h = LayerNormReference(dense(gelu, p + "output.dense") + attended, w(p + "output.LayerNorm.weight"),
                           w(p + "output.LayerNorm.bias"), c.layer_norm_eps);
  }
  if (c.task == ModelTask::kTokenClassification) return dense(h, "classifier");
  return dense(at::tanh(dense(h.select(1, 0), "bert.pooler.dense")), "classifier");
}

// A tiny BERT classifier with every weight random (LayerNorms and biases too), so that the
// comparison exercises each term.
void WriteRandomBert(const fs::path& dir, const std::string& architecture) {
  testing::WriteTinyBert(dir.string() + ".words");
  const fs::path source = dir.string() + ".config";
  json config = json::parse(ReadFile(dir.string() + ".words/config.json"));
  config["architectures"] = {architecture};
  config["id2label"] = {{"0", "a"}, {"1", "b"}, {"2", "c"}};
  testing::WriteText(source / "config.json", config.dump());
  FlatParameters flat(BertParameterSpecs(BertConfig::Parse(config.dump(), "config.json")));
  at::manual_seed(5);
  for (const auto& slot : flat.slots()) {
    at::NoGradGuard no_grad;
    at::Tensor value = flat.Value(slot);
    value.copy_(at::randn(value.sizes()) * 0.2);
    if (slot.spec.name.find("LayerNorm.weight") != std::string::npos) value.add_(1.0);
  }
  WriteHfModel(dir, source, flat, ComputeDType::kFp32);
  fs::remove_all(source);
  fs::remove_all(dir.string() + ".words");
}

TEST(BertModel, MatchesTransformersFormulasWithPaddingAndTokenTypes) {
  testing::ScratchDir dir;
  for (const std::string architecture : {"BertForSequenceClassification", "BertForTokenClassification"}) {
    SCOPED_TRACE(architecture);
    WriteRandomBert(dir / architecture, architecture);
    const LoadedModel loaded = LoadModelForInference(dir / architecture);
    ASSERT_TRUE(loaded.bert);
    const auto ids = at::tensor(std::vector<int64_t>{2, 7, 9, 12, 3, 20, 3, 2, 30, 3, 0, 0}).view({2, 6});
    const auto types = at::tensor(std::vector<int64_t>{0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0}).view({2, 6});
    const auto mask = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}).view({2, 6});
    Batch batch;
    batch.input_ids = ids;
    batch.attention_mask = mask;
    batch.token_type_ids = types;
    at::NoGradGuard no_grad;
    const at::Tensor ours = loaded.TaskLogits(batch);
    const auto weight = [&](const std::string& name) {
      return loaded.weights->Value(*loaded.weights->Find(name)).detach();
    };
    const at::Tensor expected = BertReference(loaded.config.bert, weight, ids, types, mask);
    if (loaded.config.task() == ModelTask::kSequenceClassification) {
      EXPECT_EQ(ours.sizes(), (std::vector<int64_t>{2, 3}));
      EXPECT_TRUE(at::allclose(ours.to(at::kDouble), expected, 1e-5, 1e-5)) << ours << expected;
    } else {
      EXPECT_EQ(ours.sizes(), (std::vector<int64_t>{2, 6, 3}));
      // Padding positions' outputs are meaningless (the reference's rows there are the same
      // attention over real keys, so they agree too).
      EXPECT_TRUE(at::allclose(ours.to(at::kDouble), expected, 1e-5, 1e-5)) << ours << expected;
    }
    // Padding changes nothing for the real tokens: the second sequence alone, unpadded.
    Batch alone;
    alone.input_ids = ids.narrow(0, 1, 1).narrow(1, 0, 4);
    alone.attention_mask = mask.narrow(0, 1, 1).narrow(1, 0, 4);
    alone.token_type_ids = types.narrow(0, 1, 1).narrow(1, 0, 4);
    const at::Tensor single = loaded.TaskLogits(alone);
    const at::Tensor padded = loaded.config.task() == ModelTask::kSequenceClassification
                                  ? ours.narrow(0, 1, 1)
                                  : ours.narrow(0, 1, 1).narrow(1, 0, 4);
    EXPECT_TRUE(at::allclose(single, padded, 1e-5, 1e-6));
  }
}

class BertTrainingTest : public testing::TaskRunTest {
 protected:
  void SetUp() override {
    testing::WriteTinyBert(dir_ / "base", 1);
    WriteSentimentData();
  }
};

TEST_F(BertTrainingTest, ABertLearnsSentimentAndExportsAHuggingFaceClassifier) {
  const json eval =
      TrainClassifier("sequence_classification",
                      "training: {max_steps: 120, micro_batch_size: 16, eval_every: 40, hidden_dropout: 0.1,\n"
                      "  optimizer: {lr: 1.0e-3}}\n");
  EXPECT_GE(eval.at("accuracy").get<double>(), 0.95) << eval.dump();
  EXPECT_EQ(eval.at("val_examples").get<int64_t>(), 60);

  const json config = json::parse(ReadFile(dir_ / "run" / "final" / "config.json"));
  EXPECT_EQ(config.at("architectures")[0], "BertForSequenceClassification");
  EXPECT_EQ(config.at("id2label").at("1"), "positive");
  EXPECT_TRUE(fs::exists(dir_ / "run" / "final" / "vocab.txt"));  // the tokenizer travels with the model
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::Open(dir_ / "run" / "final");
  ASSERT_TRUE(weights.Find("classifier.weight").has_value());
  EXPECT_EQ(weights.Find("classifier.weight")->info->shape, (std::vector<int64_t>{2, 32}));
  EXPECT_TRUE(weights.Find("bert.pooler.dense.weight").has_value());

  EvaluateOptions options = ExportedModel("val.jsonl");
  options.batch_size = 7;
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("confusion"), eval.at("confusion"));
  EXPECT_NEAR(evaluated.at("val_loss").get<double>(), eval.at("val_loss").get<double>(), 1e-5);
}

TEST_F(BertTrainingTest, ABertLearnsNamedEntities) {
  WriteNerData();
  const json eval =
      TrainClassifier("token_classification",
                      "training: {max_steps: 120, micro_batch_size: 16, eval_every: 40, optimizer: {lr: 1.0e-3}}\n");
  EXPECT_GE(eval.at("entity_f1").get<double>(), 0.9) << eval.dump();
  const json config = json::parse(ReadFile(dir_ / "run" / "final" / "config.json"));
  EXPECT_EQ(config.at("architectures")[0], "BertForTokenClassification");
  const SafetensorsCheckpoint weights = SafetensorsCheckpoint::Open(dir_ / "run" / "final");
  EXPECT_TRUE(weights.Find("classifier.bias").has_value());
  EXPECT_FALSE(weights.Find("bert.pooler.dense.weight").has_value());  // a tagger has no pooler

  EvaluateOptions options = ExportedModel("ner-val.jsonl");
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("per_type"), eval.at("per_type"));
}

TEST_F(BertTrainingTest, LoraOnBertTargetsQueryAndValueAndTrainsTheHead) {
  const json eval =
      TrainClassifier("sequence_classification",
                      "training: {max_steps: 120, micro_batch_size: 16, eval_every: 40, optimizer: {lr: 1.0e-2}}\n",
                      "{type: lora, lora: {r: 4, alpha: 8}}");
  EXPECT_GE(eval.at("accuracy").get<double>(), 0.9) << eval.dump();
  const json adapter = json::parse(ReadFile(dir_ / "run" / "final" / "adapter_config.json"));
  EXPECT_EQ(adapter.at("task_type"), "SEQ_CLS");
  EXPECT_EQ(adapter.at("target_modules"), json::array({"query", "value"}));  // PEFT's BERT default
  EXPECT_EQ(adapter.at("modules_to_save"), json::array({"classifier"}));
  const auto file = SafetensorsFile::Open(dir_ / "run" / "final" / "adapter_model.safetensors");
  EXPECT_NE(file->Find("base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"), nullptr);
  EXPECT_EQ(file->Find("base_model.model.bert.encoder.layer.1.attention.self.key.lora_B.weight"), nullptr);

  EvaluateOptions options = ExportedAdapter("val.jsonl");
  const json evaluated = EvaluateModel(options);
  EXPECT_EQ(evaluated.at("confusion"), LastEvaluation("run").at("confusion"));
}

TEST_F(BertTrainingTest, PromptTuningAdaptersEvaluateAsTrained) {
  // The virtual tokens join the word embeddings before the positions'; a tagger drops their
  // outputs, a sequence classifier pools the first of them (as PEFT's BERT does).
  testing::WriteText(dir_ / "ner.jsonl", testing::NerData(64, 3));
  testing::WriteText(dir_ / "ner-val.jsonl", testing::NerData(20, 4));
  for (const std::string task : {"token_classification", "sequence_classification"}) {
    SCOPED_TRACE(task);
    const bool ner = task == "token_classification";
    const std::string run = "prompt-" + task;
    RunTraining(
        Spec(fmt::format("task: {}}}\nmethod: {{type: prompt, prompt: {{num_virtual_tokens: 3}}}}\n"
                         "data: {{train: {}, validation: {}, format: {}}}\n"
                         "training: {{max_steps: 6, micro_batch_size: 8, optimizer: {{lr: 1.0e-2}}}}\n"
                         "output: {{dir: {}}}\n",
                         task, ner ? "ner.jsonl" : "train.jsonl", ner ? "ner-val.jsonl" : "val.jsonl",
                         ner ? "ner" : "classification", run)));
    const json eval = LastEvaluation(run);
    EvaluateOptions options = ExportedAdapter(ner ? "ner-val.jsonl" : "val.jsonl", run);
    options.batch_size = 5;
    const json evaluated = EvaluateModel(options);
    EXPECT_NEAR(evaluated.at("val_loss").get<double>(), eval.at("val_loss").get<double>(), 1e-5);
    EXPECT_EQ(evaluated.at(ner ? "per_type" : "confusion"), eval.at(ner ? "per_type" : "confusion"));
  }
}

TEST_F(BertTrainingTest, VirtualTokensLeaveRoomInThePositionTable) {
  // Sequences longer than the 64 positions are cut to leave room for the 4 virtual tokens; the
  // head named in modules_to_save by the user (as PEFT examples do) is the one the task adds.
  std::string text;
  for (int n = 0; n < 16; ++n) {
    std::string words;
    for (int w = 0; w < 80; ++w) {
      if (w > 0) words += ' ';
      words += w == 40 ? (n % 2 ? "bad" : "good") : "film";
    }
    text += json({{"text", words}, {"label", n % 2 ? "negative" : "positive"}}).dump() + "\n";
  }
  testing::WriteText(dir_ / "long.jsonl", text);
  RunTraining(
      Spec("task: sequence_classification}\n"
           "method: {type: prompt, prompt: {num_virtual_tokens: 4}, modules_to_save: [classifier]}\n"
           "data: {train: long.jsonl, validation: long.jsonl, format: classification}\n"
           "training: {max_steps: 2, micro_batch_size: 8}\noutput: {dir: run}\n"));
  EvaluateOptions options = ExportedAdapter("long.jsonl");
  EXPECT_EQ(EvaluateModel(options).at("examples"), 16);
  const json adapter = json::parse(ReadFile(dir_ / "run" / "final" / "adapter_config.json"));
  EXPECT_EQ(adapter.at("modules_to_save"), json::array({"classifier"}));
}

TEST_F(BertTrainingTest, APoolerTheCheckpointLacksIsCreatedAndTrained) {
  // A tagger's checkpoint has no pooler; a sequence classifier from it needs one.
  testing::WriteTinyBert(
      dir_ / "tagger", 2,
      R"(, "architectures": ["BertForTokenClassification"], "id2label": {"0": "O", "1": "B-PER", "2": "I-PER"})");
  RunTraining(
      ParseJobSpec("name: t\nmodel: {path: tagger, task: sequence_classification}\nmethod: {type: ia3}\n"
                   "data: {train: train.jsonl, format: classification}\ntraining: {max_steps: 2, micro_batch_size: 8}\n"
                   "output: {dir: run}\n",
                   "job.yaml", dir_.path()));
  const json adapter = json::parse(ReadFile(dir_ / "run" / "final" / "adapter_config.json"));
  EXPECT_EQ(adapter.at("modules_to_save"), json::array({"classifier", "pooler"}));
  EXPECT_EQ(adapter.at("target_modules"), json::array({"key", "value", "output.dense"}));
  const auto file = SafetensorsFile::Open(dir_ / "run" / "final" / "adapter_model.safetensors");
  EXPECT_NE(file->Find("base_model.model.bert.pooler.dense.weight"), nullptr);
  EXPECT_NE(file->Find("base_model.model.classifier.weight"), nullptr);
}

TEST_F(BertTrainingTest, BertIsRefusedWhereItDoesNotFit) {
  auto expect_error = [&](const std::string& body, const std::string& fragment) {
    try {
      RunTraining(Spec(body));
      FAIL() << "accepted: " << body;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir_ / "run" / "final"));
  };
  expect_error("task: causal_lm}\ndata: {train: train.jsonl, format: text}\noutput: {dir: run}\n",
               "not a causal language model");
  expect_error(
      "task: sequence_classification}\nmethod: {type: lora, lora: {target_modules: [q_proj]}}\n"
      "data: {train: train.jsonl, format: classification}\noutput: {dir: run}\n",
      "'q_proj' matches no linear layer of this bert model (its linear layers: attention.self.query");
}

}  // namespace
}  // namespace shardtune
