// BERT's layout: transformers' names and shapes, parameter counts from the config, and a tiny
// BERT that `init-model` writes reading back tensor for tensor through the Hugging Face layout.
#include "sharding/bert_layout.h"

#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "common/bert_config.h"
#include "common/safetensors.h"
#include "sharding/flat_parameters.h"
#include "test_util.h"
#include "worker/models/hf_io.h"

namespace shardtune {
namespace {

std::string TinyBert(const std::string& extra) {
  return R"({"model_type": "bert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0)" +
         extra + "}";
}

TEST(BertLayout, NamesShapesAndCountsFollowTransformers) {
  const BertConfig classifier = BertConfig::Parse(
      TinyBert(R"(, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"})"),
      "config.json");
  EXPECT_EQ(classifier.task, ModelTask::kSequenceClassification);
  const std::vector<ParameterSpec> specs = BertParameterSpecs(classifier);
  int64_t total = 0;
  for (const auto& p : specs) total += NumelOf(p.shape);
  // Embeddings 100*16 + 64*16 + 2*16 + LayerNorm 2*16; per layer 4 linears of 16x16 (+ bias),
  // 2 LayerNorms, 16->32 and 32->16 (+ biases); pooler 16x16 + 16; classifier 3x16 + 3.
  EXPECT_EQ(total, 2688 + 2 * 2224 + 272 + 51);
  EXPECT_EQ(classifier.num_parameters(), total);
  EXPECT_EQ(specs.front().name, "bert.embeddings.word_embeddings.weight");
  EXPECT_EQ(specs.back().name, "classifier.bias");
  const auto find = [&](const std::string& name) {
    for (const auto& p : specs)
      if (p.name == name) return p.shape;
    return std::vector<int64_t>{};
  };
  EXPECT_EQ(find("bert.encoder.layer.1.attention.self.query.weight"), (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(find("bert.encoder.layer.0.intermediate.dense.weight"), (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(find("bert.encoder.layer.0.output.dense.weight"), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(find("bert.pooler.dense.weight"), (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(find("classifier.weight"), (std::vector<int64_t>{3, 16}));

  const BertConfig tagger = BertConfig::Parse(
      TinyBert(R"(, "architectures": ["BertForTokenClassification"], "id2label": {"0": "O", "1": "B-PER"})"), "c");
  const std::vector<UnitSpec> units = BertUnits(tagger);
  int64_t tagger_total = 0;
  for (const auto& p : BertParameterSpecs(tagger)) tagger_total += NumelOf(p.shape);
  EXPECT_EQ(tagger.num_parameters(), tagger_total);
  ASSERT_EQ(units.size(), 4u);  // embed, 2 layers, head
  EXPECT_EQ(units[0].parameters.size(), 5u);
  EXPECT_EQ(units.back().parameters.size(), 2u);  // the classifier alone: no pooler for tagging
  EXPECT_EQ(units[2].parameters.front().name, "bert.encoder.layer.1.attention.self.query.weight");
}

TEST(BertLayout, BadConfigsAreRefusedByName) {
  auto expect_error = [](const std::string& text, const std::string& fragment) {
    try {
      BertConfig::Parse(text, "bert/config.json");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bert/config.json"), std::string::npos) << e.what();
    }
  };
  expect_error(TinyBert(R"(, "architectures": ["BertForSequenceClassification"])"), "needs id2label");
  expect_error(R"({"model_type": "bert", "hidden_act": "relu"})", "hidden_act 'relu'");
  expect_error(R"({"model_type": "bert", "hidden_size": 10, "num_attention_heads": 4})", "not a multiple");
  expect_error(R"({"model_type": "bert", "num_hidden_layers": "two"})", "'num_hidden_layers' must be an integer");
}

TEST(BertLayout, ATinyBertRoundTripsThroughTheHuggingFaceLayout) {
  testing::ScratchDir dir;
  testing::WriteText(
      dir / "src" / "config.json",
      TinyBert(R"(, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "neg", "1": "pos"})"));
  const BertConfig config = BertConfig::Parse(ReadFile(dir / "src" / "config.json"), "config.json");
  FlatParameters written(BertParameterSpecs(config));
  InitializeWeights(written, 7);
  WriteHfModel(dir / "model", dir / "src" / "config.json", written, ComputeDType::kFp32);

  FlatParameters read(BertParameterSpecs(config));
  LoadHfWeights(dir / "model", read);
  EXPECT_TRUE(at::equal(read.values(), written.values()));
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(dir / "model");
  EXPECT_EQ(checkpoint.Names().size(), BertParameterSpecs(config).size());
  // LayerNorms start as the identity, biases at zero, matrices random.
  const auto value = [&](const std::string& name) { return read.Value(*read.Find(name)); };
  EXPECT_TRUE(at::equal(value("bert.embeddings.LayerNorm.weight"), at::ones({16})));
  EXPECT_TRUE(at::equal(value("bert.encoder.layer.0.output.LayerNorm.bias"), at::zeros({16})));
  EXPECT_GT(value("bert.encoder.layer.0.attention.self.key.weight").abs().sum().item<double>(), 0);
}

}  // namespace
}  // namespace shardtune
