// Every size a config.json implies is checked before any tensor is shaped from it: each key
// within its limit (hf_config.h's config_limits), the divisibility the attention needs, token ids
// inside the vocabulary, and the parameter count the sizes imply. Each refusal names the file and
// the key and says what was expected.

#include "common/model_config.h"

#include <gtest/gtest.h>

#include <string>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/hf_config.h"

namespace shardtune {
namespace {

// A small valid Llama config with `extra` fields appended: a key given again overrides the first
// (nlohmann's parser keeps the last of duplicate keys).
std::string Llama(const std::string& extra = "") {
  return R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0)" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

std::string Bert(const std::string& extra = "") {
  return R"({"model_type": "bert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2,
    "pad_token_id": 0)" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

// The error ModelConfig::Parse throws for `json` (named as a config.json path), or a failure.
std::string ErrorOf(const std::string& json) {
  try {
    ModelConfig::Parse(json, "/models/m/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << json;
  return "";
}

void ExpectRefused(const std::string& json, const std::string& fragment) {
  const std::string message = ErrorOf(json);
  EXPECT_NE(message.find("/models/m/config.json"), std::string::npos) << message;
  EXPECT_NE(message.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << message;
}

TEST(ModelConfigSizes, ValidConfigsAndRealModelsPass) {
  EXPECT_EQ(ModelConfig::Parse(Llama(), "config.json").hidden_size(), 32);
  EXPECT_EQ(ModelConfig::Parse(Bert(), "config.json").hidden_size(), 16);
  // The planner's example shapes, up to Llama 3.1 405B, are inside every limit.
  for (const char* name : {"llama-7b", "llama-70b", "llama-405b", "llama-100b-class", "bert-base-cased"}) {
    const auto path = std::filesystem::path(SHARDTUNE_SOURCE_DIR) / "examples/models" / (std::string(name) + ".json");
    EXPECT_GT(ModelConfig::Parse(ReadFile(path), path.string()).num_parameters(), 0) << name;
  }
}

TEST(ModelConfigSizes, HiddenSizeOfABillionIsRefusedNamingTheKey) {
  // The case a new user met: LibTorch's "negative dimension" with a stack trace before this check.
  ExpectRefused(Llama(R"("hidden_size": 1000000000)"),
                "'hidden_size' must be between 1 and 131072 (larger than any real model), got 1000000000");
  ExpectRefused(Bert(R"("hidden_size": 1000000000)"), "'hidden_size' must be between 1 and 131072");
}

TEST(ModelConfigSizes, EverySizeKeyHasALimit) {
  const std::pair<const char*, const char*> llama_keys[] = {{"vocab_size", "4194304"},
                                                            {"hidden_size", "131072"},
                                                            {"intermediate_size", "1048576"},
                                                            {"num_hidden_layers", "1024"},
                                                            {"num_attention_heads", "1024"},
                                                            {"num_key_value_heads", "1024"},
                                                            {"max_position_embeddings", "16777216"},
                                                            {"head_dim", "4096"}};
  for (const auto& [key, max] : llama_keys) {
    const std::string field = std::string("\"") + key + "\": ";
    ExpectRefused(Llama(field + "9223372036854775807"), std::string("'") + key + "' must be between 1 and " + max);
    ExpectRefused(Llama(field + "0"), std::string("'") + key + "' must be between 1 and " + max);
    ExpectRefused(Llama(field + "-4"), std::string("'") + key + "' must be between 1 and " + max);
  }
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                          "max_position_embeddings", "type_vocab_size"}) {
    ExpectRefused(Bert(std::string("\"") + key + "\": 100000000000"), std::string("'") + key + "' must be between 1");
  }
  ExpectRefused(
      Llama(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 0})"),
      "'original_max_position_embeddings' must be between 1 and 16777216");
}

TEST(ModelConfigSizes, NumbersBeyondInt64AreRefusedAsNotIntegers) {
  ExpectRefused(Llama(R"("hidden_size": 1e30)"), "'hidden_size' must be an integer");
  ExpectRefused(Llama(R"("vocab_size": 18446744073709551615)"), "'vocab_size' must be between 1");
}

TEST(ModelConfigSizes, HeadsMustDivide) {
  ExpectRefused(Llama(R"("num_attention_heads": 6, "num_key_value_heads": 4, "hidden_size": 48)"),
                "num_attention_heads 6 is not a multiple of num_key_value_heads 4");
  ExpectRefused(Llama(R"("num_attention_heads": 4, "num_key_value_heads": 8)"), "is not a multiple of");
  ExpectRefused(Llama(R"("hidden_size": 30)"), "hidden_size 30 is not a multiple of num_attention_heads 4");
  ExpectRefused(Llama(R"("head_dim": 7)"), "head_dim 7 must be even");
  ExpectRefused(Bert(R"("hidden_size": 18)"), "hidden_size 18 is not a multiple of num_attention_heads 4");
}

TEST(ModelConfigSizes, ProductsBeyondAnyRealModelAreRefused) {
  // Each size inside its limit, their product (about 4.8e14 parameters) beyond any model, and
  // without the limits it would be beyond int64 in a layer's weights times the layers.
  ExpectRefused(Llama(R"("hidden_size": 131072, "intermediate_size": 1048576, "num_hidden_layers": 1024,
                         "num_attention_heads": 1024, "num_key_value_heads": 1024, "vocab_size": 4194304)"),
                "more than any real model (at most 2199023255552)");
  ExpectRefused(Bert(R"("hidden_size": 131072, "intermediate_size": 1048576, "num_hidden_layers": 1024)"),
                "more than any real model");
}

TEST(ModelConfigSizes, TokenIdsMustNameVocabularyRows) {
  ExpectRefused(Llama(R"("pad_token_id": 64)"),
                "'pad_token_id' must be a token id below vocab_size 64 (or -1: none), got 64");
  ExpectRefused(Llama(R"("pad_token_id": -2)"), "'pad_token_id' must be a token id below vocab_size 64");
  ExpectRefused(Llama(R"("eos_token_id": [2, 99])"), "'eos_token_id' must be a token id below vocab_size 64, got 99");
  ExpectRefused(Llama(R"("bos_token_id": -1)"), "'bos_token_id' must be a token id below vocab_size 64, got -1");
  ExpectRefused(Bert(R"("pad_token_id": 100)"), "'pad_token_id' must be a token id below vocab_size 100, got 100");
  // -1 is transformers' "no padding token" for a Llama.
  EXPECT_EQ(ModelConfig::Parse(Llama(R"("pad_token_id": -1)"), "config.json").llama.padding_idx, -1);
}

TEST(ModelConfigSizes, Id2labelIsBounded) {
  std::string labels = R"("architectures": ["LlamaForSequenceClassification"], "id2label": {)";
  for (int i = 0; i <= config_limits::kLabels; ++i) labels += (i ? ", \"" : "\"") + std::to_string(i) + "\": \"l\"";
  ExpectRefused(Llama(labels + "}"), "'id2label' must hold at most 65536 classes, got 65537");
}

}  // namespace
}  // namespace shardtune
