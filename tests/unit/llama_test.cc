#include "worker/models/llama.h"

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "common/safetensors.h"
#include "tiny_models.h"
#include "worker/generate.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::TinyConfig;
using testing::WriteTinyModel;

LlamaConfig ParseConfig(const std::string& json) { return LlamaConfig::Parse(json, "config.json"); }

at::Tensor Logits(const LlamaModel& model, const std::vector<int64_t>& ids) {
  at::NoGradGuard no_grad;
  return model.Forward(at::tensor(ids, at::kLong).view({1, -1}), at::Tensor());
}

TEST(Stories260K, GreedyGenerationFromBosMatchesTheReference) {
  const fs::path dir = testing::FixturesDir() / "models" / "stories260K-hf";
  SKIP_WITHOUT_FIXTURE(dir);
  std::vector<int64_t> expected;
  std::ifstream in(dir / "greedy_ids_from_bos.txt");
  for (int64_t id; in >> id;) expected.push_back(id);
  ASSERT_EQ(expected.size(), 40u);

  const LoadedModel loaded = LoadModelForInference(dir);
  const LlamaConfig& config = loaded.model->config();
  EXPECT_EQ(config.num_key_value_heads, 4);
  EXPECT_TRUE(config.tie_word_embeddings);
  GenerateOptions options;
  options.max_new_tokens = 40;
  EXPECT_EQ(Generate(*loaded.model, {1}, options), expected);
}

TEST(Stories260K, CachedDecodingAgreesWithFullRecomputation) {
  const fs::path dir = testing::FixturesDir() / "models" / "stories260K-hf";
  SKIP_WITHOUT_FIXTURE(dir);
  const LoadedModel loaded = LoadModelForInference(dir);
  GenerateOptions options;
  options.max_new_tokens = 20;
  std::vector<int64_t> sequence = {1};
  const std::vector<int64_t> generated = Generate(*loaded.model, sequence, options);
  sequence.insert(sequence.end(), generated.begin(), generated.end());
  // One forward over the whole sequence: position t's argmax must be token t+1.
  const at::Tensor argmax = Logits(*loaded.model, sequence).argmax(-1)[0];
  for (size_t t = 0; t + 1 < sequence.size(); ++t)
    EXPECT_EQ(argmax[t].item<int64_t>(), sequence[t + 1]) << "position " << t;
}

TEST(LlamaConfig, ReadsEveryVariant) {
  const LlamaConfig llama = ParseConfig(TinyConfig("llama", R"("tie_word_embeddings": true)"));
  EXPECT_EQ(llama.head_dim, 8);
  EXPECT_FALSE(llama.qkv_bias);
  EXPECT_TRUE(llama.tie_word_embeddings);
  EXPECT_EQ(llama.eos_token_ids, std::vector<int64_t>{2});

  const LlamaConfig qwen2 = ParseConfig(TinyConfig("qwen2", R"("sliding_window": 4, "use_sliding_window": false)"));
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.o_bias);
  EXPECT_FALSE(qwen2.sliding_window.has_value());

  const LlamaConfig mistral = ParseConfig(TinyConfig("mistral", R"("sliding_window": 4)"));
  EXPECT_EQ(mistral.sliding_window.value_or(0), 4);

  const LlamaConfig biased = ParseConfig(TinyConfig("llama", R"("attention_bias": true, "mlp_bias": true)"));
  EXPECT_TRUE(biased.qkv_bias);
  EXPECT_TRUE(biased.o_bias);
  EXPECT_TRUE(biased.mlp_bias);

  const LlamaConfig wide_heads = ParseConfig(TinyConfig("llama", R"("head_dim": 16)"));
  EXPECT_EQ(wide_heads.head_dim, 16);
  EXPECT_EQ(LlamaParameterSpecs(wide_heads)[2].shape, (std::vector<int64_t>{64, 32}));  // q_proj: 4 heads x 16

  const LlamaConfig linear = ParseConfig(TinyConfig("llama", R"("rope_scaling": {"type": "linear", "factor": 2.0})"));
  EXPECT_EQ(linear.rope_scaling.type, RopeScalingType::kLinear);
  const LlamaConfig llama3 = ParseConfig(TinyConfig("llama", R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16})"));
  EXPECT_EQ(llama3.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(llama3.rope_scaling.original_max_position_embeddings, 16);

  const LlamaConfig eos_list = ParseConfig(R"({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
      "eos_token_id": [2, 7]})");
  EXPECT_EQ(eos_list.eos_token_ids, (std::vector<int64_t>{2, 7}));
}

TEST(LlamaConfig, ParameterCountMatchesTheTensors) {
  for (const std::string& extra :
       {std::string(R"("tie_word_embeddings": true)"), std::string(R"("attention_bias": true, "mlp_bias": true)")}) {
    const LlamaConfig config = ParseConfig(TinyConfig("llama", extra));
    int64_t total = 0;
    for (const auto& spec : LlamaParameterSpecs(config)) {
      int64_t n = 1;
      for (int64_t d : spec.shape) n *= d;
      total += n;
    }
    EXPECT_EQ(config.num_parameters(), total) << extra;
  }
}

TEST(LlamaConfig, RejectsWhatItCannotRun) {
  auto expect_error = [](const std::string& json, const std::string& fragment) {
    try {
      LlamaConfig::Parse(json, "config.json");
      ADD_FAILURE() << "accepted: " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    }
  };
  expect_error(TinyConfig("bert"), "model_type 'bert' is not supported");
  expect_error(TinyConfig("llama", R"("rope_scaling": {"type": "yarn", "factor": 4.0})"), "rope_scaling type 'yarn'");
  expect_error(R"({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4, "hidden_size": 48})",
               "num_attention_heads 6 is not a multiple of num_key_value_heads 4");
  expect_error(R"({"model_type": "llama", "hidden_size": "big"})", "'hidden_size' must be an integer");
  expect_error("{not json", "not valid JSON");
}

TEST(Rope, LinearScalingDividesEveryFrequency) {
  const LlamaConfig plain = ParseConfig(TinyConfig());
  const LlamaConfig scaled = ParseConfig(TinyConfig("llama", R"("rope_scaling": {"type": "linear", "factor": 4.0})"));
  EXPECT_TRUE(at::allclose(RopeInverseFrequencies(scaled), RopeInverseFrequencies(plain) / 4.0, 0, 0));
  // theta^(-2i/d) for d = 8: 1, 10000^-0.25, 10000^-0.5, 10000^-0.75
  EXPECT_NEAR(RopeInverseFrequencies(plain)[1].item<double>(), 0.1, 1e-7);
}

TEST(Rope, Llama3ScalingKeepsHighFrequenciesAndSlowsLowOnes) {
  // head_dim 16: wavelengths 2*pi*10000^(2i/16) for i in 0..7, from 6.3 to ~19000.
  const std::string base =
      R"("head_dim": 16, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})";
  const at::Tensor plain = RopeInverseFrequencies(ParseConfig(TinyConfig("llama", R"("head_dim": 16)")));
  const at::Tensor scaled = RopeInverseFrequencies(ParseConfig(TinyConfig("llama", base)));
  int high = 0, low = 0, medium = 0;
  for (int64_t i = 0; i < plain.size(0); ++i) {
    const double f = plain[i].item<double>(), g = scaled[i].item<double>();
    const double wavelen = 2 * M_PI / f;
    if (wavelen < 64.0 / 4.0) {  // shorter than original_max / high_freq_factor: unchanged
      EXPECT_FLOAT_EQ(g, f) << i;
      ++high;
    } else if (wavelen > 64.0 / 1.0) {  // longer than original_max / low_freq_factor: divided by factor
      EXPECT_FLOAT_EQ(g, f / 8.0) << i;
      ++low;
    } else {  // in between: blended, strictly between the two
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      EXPECT_NEAR(g, (1 - smooth) * f / 8.0 + smooth * f, 1e-6 * f) << i;
      ++medium;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
}

// The config variants the model supports, each written, reloaded and run.
const std::vector<std::pair<std::string, std::string>> kVariants = {
    {"llama", R"("tie_word_embeddings": true)"},
    {"llama", R"("attention_bias": true, "mlp_bias": true, "rope_scaling": {"type": "linear", "factor": 2.0})"},
    {"llama", R"("head_dim": 16, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16})"},
    {"qwen2", R"("tie_word_embeddings": false)"},
    {"mistral", R"("sliding_window": 4)"},
};

TEST(LlamaModel, EveryVariantSavesAndLoadsBitExactly) {
  for (const auto& [type, extra] : kVariants) {
    SCOPED_TRACE(type + " " + extra);
    ScratchDir dir;
    WriteTinyModel(dir / "a", TinyConfig(type, extra), /*seed=*/3);
    const LoadedModel a = LoadModelForInference(dir / "a");
    WriteHfModel(dir / "b", dir / "a", *a.weights, ComputeDType::kFp32);
    const LoadedModel b = LoadModelForInference(dir / "b");
    EXPECT_TRUE(at::equal(a.weights->values(), b.weights->values()));
    const std::vector<int64_t> ids = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37};
    const at::Tensor logits = Logits(*a.model, ids);
    EXPECT_TRUE(at::equal(logits, Logits(*b.model, ids)));
    EXPECT_TRUE(logits.isfinite().all().item<bool>());
    // Tied checkpoints hold no lm_head; untied ones do.
    const auto checkpoint = SafetensorsCheckpoint::Open(dir / "b");
    EXPECT_EQ(checkpoint.Find("lm_head.weight").has_value(), !a.model->config().tie_word_embeddings);
  }
}

TEST(LlamaModel, WritesBf16CheckpointsThatLoadBack) {
  ScratchDir dir;
  WriteTinyModel(dir / "a", TinyConfig(), 1);
  const LoadedModel a = LoadModelForInference(dir / "a");
  WriteHfModel(dir / "bf16", dir / "a", *a.weights, ComputeDType::kBf16);
  const auto file = SafetensorsFile::Open(dir / "bf16" / "model.safetensors");
  EXPECT_EQ(file->Find("model.norm.weight")->dtype, DType::kBF16);
  const LoadedModel b = LoadModelForInference(dir / "bf16");
  EXPECT_TRUE(at::allclose(a.weights->values(), b.weights->values(), 1e-2, 1e-3));
  EXPECT_TRUE(at::equal(b.weights->values(), b.weights->values().to(at::kBFloat16).to(at::kFloat)));
}

TEST(LlamaModel, PaddingDoesNotChangeRealTokens) {
  ScratchDir dir;
  WriteTinyModel(dir / "m", TinyConfig("qwen2"), 2);
  const LoadedModel m = LoadModelForInference(dir / "m");
  const std::vector<int64_t> short_ids = {1, 7, 3, 9};
  const at::Tensor alone = Logits(*m.model, short_ids);
  at::NoGradGuard no_grad;
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 7, 3, 9, 0, 0, 1, 4, 4, 4, 4, 4}, at::kLong).view({2, 6});
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1}, at::kLong).view({2, 6});
  const at::Tensor batched = m.model->Forward(ids, mask);
  EXPECT_TRUE(at::allclose(batched[0].narrow(0, 0, 4), alone[0], 1e-5, 1e-5));
}

TEST(LlamaModel, Qwen2BiasesTakePart) {
  ScratchDir dir;
  WriteTinyModel(dir / "m", TinyConfig("qwen2"), 4);
  LoadedModel m = LoadModelForInference(dir / "m");
  const std::vector<int64_t> ids = {1, 2, 3, 4};
  const at::Tensor before = Logits(*m.model, ids);
  at::NoGradGuard no_grad;
  m.weights->Value(*m.weights->Find("model.layers.0.self_attn.v_proj.bias")).fill_(0.5);
  EXPECT_FALSE(at::allclose(before, Logits(*m.model, ids), 1e-4, 1e-4));
}

TEST(LlamaModel, SlidingWindowLimitsTheReceptiveField) {
  ScratchDir dir;
  WriteTinyModel(dir / "m", TinyConfig("mistral", R"("sliding_window": 3)"), 5);
  const LoadedModel m = LoadModelForInference(dir / "m");
  std::vector<int64_t> ids = {1, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  const at::Tensor a = Logits(*m.model, ids);
  ids[1] = 30;
  const at::Tensor b = Logits(*m.model, ids);
  // Two layers of window 3 see 4 positions back; position 1's change reaches positions 1..5.
  EXPECT_FALSE(at::allclose(a[0][3], b[0][3]));
  for (int64_t t = 6; t < 10; ++t) EXPECT_TRUE(at::equal(a[0][t], b[0][t])) << t;
}

TEST(LlamaModel, MissingOrMisshapedTensorsNameTheTensor) {
  ScratchDir dir;
  WriteTinyModel(dir / "m", TinyConfig(), 0);
  // A config that needs biases the checkpoint does not have.
  testing::WriteText(dir / "m" / "config.json", TinyConfig("qwen2"));
  try {
    LoadModelForInference(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj.bias"), std::string::npos) << e.what();
  }
  testing::WriteText(dir / "m" / "config.json", TinyConfig("llama", R"("intermediate_size": 65)"));
  try {
    LoadModelForInference(dir / "m");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has shape [64, 32] but config.json implies [65, 32]"), std::string::npos)
        << e.what();
  }
}

TEST(Generate, SamplingIsSeededAndTopPOfZeroIsGreedy) {
  ScratchDir dir;
  WriteTinyModel(dir / "m", TinyConfig(), 6);
  const LoadedModel m = LoadModelForInference(dir / "m");
  GenerateOptions sampled;
  sampled.temperature = 1.0;
  sampled.seed = 11;
  sampled.stop_at_eos = false;
  sampled.max_new_tokens = 16;
  EXPECT_EQ(Generate(*m.model, {1}, sampled), Generate(*m.model, {1}, sampled));
  GenerateOptions other = sampled;
  other.seed = 12;
  EXPECT_NE(Generate(*m.model, {1}, sampled), Generate(*m.model, {1}, other));
  GenerateOptions nucleus = sampled;
  nucleus.top_p = 0.0;  // only the most likely token survives
  GenerateOptions greedy;
  greedy.stop_at_eos = false;
  greedy.max_new_tokens = 16;
  EXPECT_EQ(Generate(*m.model, {1}, nucleus), Generate(*m.model, {1}, greedy));
}

}  // namespace
}  // namespace shardtune

namespace shardtune {
namespace {

TEST(LlamaConfig, Qwen2SlidingWindowStartsAtMaxWindowLayers) {
  const LlamaConfig c = LlamaConfig::Parse(
      testing::TinyConfig("qwen2", R"("use_sliding_window": true, "sliding_window": 4, "max_window_layers": 1)"),
      "config.json");
  EXPECT_FALSE(c.UsesSlidingWindow(0));
  EXPECT_TRUE(c.UsesSlidingWindow(1));
  const LlamaConfig mistral =
      LlamaConfig::Parse(testing::TinyConfig("mistral", R"("sliding_window": 4)"), "config.json");
  EXPECT_TRUE(mistral.UsesSlidingWindow(0));
  EXPECT_EQ(mistral.padding_idx.value_or(-1), 0);  // TinyConfig states pad_token_id 0
}

}  // namespace
}  // namespace shardtune
