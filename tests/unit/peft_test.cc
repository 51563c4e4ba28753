// Parameter-efficient methods: trainable-parameter counts against the formulas of docs/peft.md,
// merged weights against base + adapter, the adapter files' PEFT names and shapes, learning,
// resume, and recomputation's dropout masks.
#include "worker/peft/peft.h"

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/safetensors.h"
#include "sharding/zero_engine.h"
#include "tiny_models.h"
#include "worker/generate.h"
#include "worker/peft/adapter_io.h"
#include "worker/trainer.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ScratchDir;

MethodSpec Lora(int64_t r, std::vector<std::string> targets, MethodType type = MethodType::kLora) {
  MethodSpec m;
  m.type = type;
  m.lora.r = r;
  m.lora.alpha = 2.0 * static_cast<double>(r);
  m.lora.target_modules = std::move(targets);
  return m;
}

MethodSpec Method(MethodType type) {
  MethodSpec m;
  m.type = type;
  return m;
}

// The formulas of docs/peft.md, written out for each method, on the model of `c`.
void ExpectEveryMethodHasTheTrainableParametersOfItsFormula(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, ff = c.intermediate_size, L = c.num_hidden_layers;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  SCOPED_TRACE(fmt::format("hidden {} ff {} layers {} q {} kv {}", h, ff, L, q, kv));
  struct Case {
    MethodSpec method;
    int64_t expected;
  };
  std::vector<Case> cases;
  cases.push_back({Lora(4, {"q_proj", "v_proj"}), L * 4 * ((h + q) + (h + kv))});
  MethodSpec all = Lora(2, {"all-linear"});
  all.lora.target_is_pattern = true;
  const int64_t all_lora = L * 2 * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + ff) + (ff + h));
  cases.push_back({all, all_lora});
  MethodSpec dora = all;
  dora.type = MethodType::kDora;
  cases.push_back({dora, all_lora + L * (q + 2 * kv + h + 2 * ff + h)});
  MethodSpec regex = Lora(3, {R"(.*\.self_attn\.(q|k)_proj)"});
  regex.lora.target_is_pattern = true;
  cases.push_back({regex, L * 3 * ((h + q) + (h + kv))});
  cases.push_back({Method(MethodType::kIa3), L * (kv + kv + ff)});
  MethodSpec houlsby = Method(MethodType::kAdapter);
  houlsby.adapter.bottleneck = 8;
  houlsby.adapter.placement = AdapterPlacement::kHoulsby;
  cases.push_back({houlsby, L * 2 * (2 * h * 8 + 8 + h)});
  MethodSpec pfeiffer = houlsby;
  pfeiffer.adapter.placement = AdapterPlacement::kPfeiffer;
  cases.push_back({pfeiffer, L * (2 * h * 8 + 8 + h)});
  MethodSpec prefix = Method(MethodType::kPrefix);
  prefix.prefix.num_virtual_tokens = 5;
  cases.push_back({prefix, 5 * L * 2 * kv});
  MethodSpec projected = prefix;
  projected.prefix.projection = true;
  projected.prefix.encoder_hidden_size = 16;
  cases.push_back({projected, 5 * kv + (kv * 16 + 16) + (16 * L * 2 * kv + L * 2 * kv)});
  MethodSpec prompt = Method(MethodType::kPrompt);
  prompt.prompt.num_virtual_tokens = 7;
  cases.push_back({prompt, 7 * h});
  if (!c.tie_word_embeddings) {
    MethodSpec saved = Lora(4, {"q_proj", "v_proj"});
    saved.modules_to_save = {"lm_head"};
    cases.push_back({saved, L * 4 * ((h + q) + (h + kv)) + c.vocab_size * h});
  }
  for (const Case& test : cases) {
    SCOPED_TRACE(ToString(test.method.type));
    const PeftMethod peft(c, test.method);
    EXPECT_EQ(peft.trainable_count(), test.expected);
    // What the engine trains is exactly that; the rest is frozen.
    SingleProcessCommunicator world;
    OwnedProcessGroups groups = MakeProcessGroups(world, 0);
    ZeroEngine engine(peft.Units(), ZeroConfig{}, groups.groups);
    EXPECT_EQ(engine.layout().trainable_parameter_count(), test.expected);
    EXPECT_EQ(engine.layout().parameter_count(),
              c.num_parameters() + test.expected - (test.method.modules_to_save.empty() ? 0 : c.vocab_size * h));
    // fp32 AdamW state of the trainable parameters only: master weights, two moments.
    const MemoryAccount memory = engine.memory();
    EXPECT_LE(memory.optimizer, 8 * engine.layout().trainable_shard_total());
    EXPECT_GE(memory.optimizer, 8 * test.expected);
  }
}

TEST(PeftCounts, EveryMethodHasTheTrainableParametersOfItsFormula) {
  ExpectEveryMethodHasTheTrainableParametersOfItsFormula(
      LlamaConfig::Parse(testing::TinyConfig("llama", R"("tie_word_embeddings": false)"), "tiny"));
}

TEST(PeftCounts, EveryMethodHasTheTrainableParametersOfItsFormulaOnStories260K) {
  const fs::path stories = testing::FixturesDir() / "models" / "stories260K-hf";
  SKIP_WITHOUT_FIXTURE(stories);
  ExpectEveryMethodHasTheTrainableParametersOfItsFormula(LlamaConfig::Load(stories));
}

TEST(PeftMethod, BadTargetsAreRefusedNamingTheField) {
  const LlamaConfig c = LlamaConfig::Parse(testing::TinyConfig("llama", R"("tie_word_embeddings": true)"), "tiny");
  auto expect_error = [&](const MethodSpec& m, const std::string& fragment) {
    try {
      PeftMethod peft(c, m);
      FAIL() << "accepted: " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error(Lora(4, {"qq_proj"}), "method.lora.target_modules: 'qq_proj' matches no linear layer");
  expect_error(Lora(4, {"layers.0.self_attn.q_proj"}), "names self_attn.q_proj in 1 of 2 layers");
  // Unset targets are the family's defaults, PEFT's: q_proj and v_proj.
  EXPECT_EQ(PeftMethod(c, Lora(4, {})).spec().lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  MethodSpec both = Lora(4, {"q_proj", "o_proj"});
  both.modules_to_save = {"o_proj"};
  expect_error(both, "method.modules_to_save: 'o_proj' is also a target");
  MethodSpec partial = Lora(4, {R"(model\.layers\.0\.self_attn\.q_proj)"});
  partial.lora.target_is_pattern = true;
  expect_error(partial, "matches 1 of 2 layers' self_attn.q_proj");
  MethodSpec ia3 = Method(MethodType::kIa3);
  ia3.ia3.target_modules = {"k_proj"};
  ia3.ia3.feedforward_modules = {"down_proj"};
  ia3.ia3.feedforward_given = true;
  expect_error(ia3, "method.ia3.feedforward_modules: 'mlp.down_proj' is not among ia3.target_modules");
  // Unset, the feed-forward modules are the family's (down_proj) among the targets, as in PEFT.
  ia3.ia3.feedforward_modules.clear();
  ia3.ia3.feedforward_given = false;
  EXPECT_TRUE(PeftMethod(c, ia3).spec().ia3.feedforward_modules.empty());
  ia3.ia3.target_modules.clear();
  EXPECT_EQ(PeftMethod(c, ia3).spec().ia3.target_modules, (std::vector<std::string>{"k_proj", "v_proj", "down_proj"}));
  EXPECT_EQ(PeftMethod(c, ia3).spec().ia3.feedforward_modules, (std::vector<std::string>{"down_proj"}));
  // Given empty, none: every target's output is scaled.
  ia3.ia3.feedforward_given = true;
  EXPECT_TRUE(PeftMethod(c, ia3).spec().ia3.feedforward_modules.empty());
  MethodSpec saved = Lora(4, {"q_proj"});
  saved.modules_to_save = {"lm_head"};  // TinyConfig ties the head to the embedding
  expect_error(saved, "'lm_head' is tied to the input embeddings");
}

// Random adapter values (LoRA's B not zero), so that the adapter changes the model.
std::map<std::string, at::Tensor> RandomAdapter(const PeftMethod& peft, uint64_t seed) {
  at::manual_seed(seed);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& p : peft.parameters()) {
    at::Tensor t = at::randn(p.shape, at::kFloat) * 0.3;
    if (p.name.find("ia3_l") != std::string::npos || p.name.find("magnitude") != std::string::npos) t = t.abs() + 0.5;
    tensors[p.name] = t;
  }
  return tensors;
}

TEST(PeftMerge, MergedWeightsComputeWhatBasePlusAdapterComputes) {
  ScratchDir dir;
  testing::WriteTinyModel(dir / "base", testing::TinyConfig("llama", R"("tie_word_embeddings": false)"), 3);
  const LlamaConfig config = LlamaConfig::Load(dir / "base");
  MethodSpec lora = Lora(4, {"all-linear"});
  lora.lora.target_is_pattern = true;
  MethodSpec rslora = Lora(4, {"q_proj", "o_proj", "down_proj"});
  rslora.lora.use_rslora = true;
  MethodSpec dora = Lora(4, {"q_proj", "v_proj", "gate_proj", "down_proj"}, MethodType::kDora);
  const std::vector<MethodSpec> methods = {lora, rslora, dora, Method(MethodType::kIa3)};
  const LoadedModel base = LoadModelForInference(dir / "base");
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 13, 17, 21, 25}, at::kLong).view({1, -1});
  int k = 0;
  for (const MethodSpec& m : methods) {
    SCOPED_TRACE(ToString(m.type));
    const PeftMethod peft(config, m);
    const auto tensors = RandomAdapter(peft, 11 + k);
    const fs::path adapter = dir / fmt::format("adapter-{}", k++);
    fs::create_directories(adapter);
    WritePeftAdapter(adapter, peft, (dir / "base").string(), tensors, ComputeDType::kFp32);
    const LoadedModel unmerged = LoadModelForInference(dir / "base", adapter);

    FlatParameters merged(LlamaParameterSpecs(config));
    merged.values().copy_(base.weights->values());
    for (const auto& slot : merged.slots()) {
      at::Tensor value = merged.Value(slot);
      value.copy_(peft.Merged(slot.spec.name, value.clone(), [&](const std::string& n) { return tensors.at(n); }));
    }
    const LlamaModel merged_model(
        config, BindLlamaWeights(config, [&](const std::string& n) { return merged.Value(*merged.Find(n)); }));

    at::NoGradGuard no_grad;
    const at::Tensor a = unmerged.model->Forward(ids, at::Tensor()), b = merged_model.Forward(ids, at::Tensor());
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-5);
    EXPECT_GT((a - base.model->Forward(ids, at::Tensor())).abs().max().item<double>(), 1e-2);  // it does something
    GenerateOptions greedy;
    greedy.max_new_tokens = 12;
    greedy.stop_at_eos = false;
    EXPECT_EQ(Generate(*unmerged.model, {1, 5, 9}, greedy), Generate(merged_model, {1, 5, 9}, greedy));
  }
}

// A prefix is what Hugging Face passes as past_key_values: with the keys and values a base model
// cached for P real tokens, the adapted model computes what the base model computes after them
// (positions included), with and without a KV cache of its own.
TEST(PeftPrefix, APrefixActsAsTheKeysAndValuesOfAPast) {
  ScratchDir dir;
  testing::WriteTinyModel(dir / "base", testing::TinyConfig("llama", R"("tie_word_embeddings": false)"), 4);
  const LlamaConfig config = LlamaConfig::Load(dir / "base");
  const LoadedModel base = LoadModelForInference(dir / "base");
  const int64_t p = 5;
  const at::Tensor past = at::tensor(std::vector<int64_t>{1, 30, 7, 12, 44}, at::kLong).view({1, -1});
  const at::Tensor input = at::tensor(std::vector<int64_t>{9, 10, 11, 3, 26, 27}, at::kLong).view({1, -1});
  at::NoGradGuard no_grad;
  KvCache cache;
  base.model->Forward(past, at::Tensor(), &cache);
  const KvCache prefix_cache = cache;  // the tensors are replaced, not written into, as the cache grows
  const at::Tensor expected = base.model->Forward(input, at::Tensor(), &cache);

  MethodSpec method = Method(MethodType::kPrefix);
  method.prefix.num_virtual_tokens = p;
  const PeftMethod peft(config, method);
  std::vector<at::Tensor> columns;  // per layer: keys (P, kv), then values
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    for (const at::Tensor& t : {prefix_cache.keys[i], prefix_cache.values[i]})
      columns.push_back(t[0].reshape({p, -1}));  // (T, kv_heads, D) per batch
  }
  const fs::path adapter = dir / "prefix";
  fs::create_directories(adapter);
  WritePeftAdapter(adapter, peft, "base", {{"prompt_embeddings", at::cat(columns, 1)}}, ComputeDType::kFp32);
  const LoadedModel adapted = LoadModelForInference(dir / "base", adapter);
  EXPECT_LT((adapted.model->Forward(input, at::Tensor()) - expected).abs().max().item<double>(), 1e-5);

  KvCache own;  // step by step through the adapted model's cache
  adapted.model->Forward(input.narrow(1, 0, 4), at::Tensor(), &own);
  const at::Tensor last = adapted.model->Forward(input.narrow(1, 4, 2), at::Tensor(), &own);
  EXPECT_LT((last - expected.narrow(1, 4, 2)).abs().max().item<double>(), 1e-5);
}

TEST(PeftAdapterFiles, MalformedAdaptersAreRefusedNamingTheProblem) {
  ScratchDir dir;
  testing::WriteTinyModel(dir / "base", testing::TinyConfig(), 3);
  const LlamaConfig config = LlamaConfig::Load(dir / "base");
  const PeftMethod peft(config, Lora(4, {"q_proj"}));
  auto tensors = RandomAdapter(peft, 1);
  fs::create_directories(dir / "ok");
  WritePeftAdapter(dir / "ok", peft, "base", tensors, ComputeDType::kBf16);
  EXPECT_EQ(ReadPeftAdapter(dir / "ok", config).tensors.size(), tensors.size());

  // Missing tensors are refused before anything is written.
  tensors.erase(tensors.begin());
  fs::create_directories(dir / "partial");
  EXPECT_THROW(WritePeftAdapter(dir / "partial", peft, "base", tensors, ComputeDType::kFp32), Error);
  EXPECT_TRUE(fs::is_empty(dir / "partial"));

  auto expect_error = [&](const std::string& config_text, const std::string& fragment) {
    fs::copy(dir / "ok", dir / "bad", fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    testing::WriteText(dir / "bad" / "adapter_config.json", config_text);
    try {
      ReadPeftAdapter(dir / "bad", config);
      FAIL() << "accepted: " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    fs::remove_all(dir / "bad");
  };
  expect_error("{not json", "adapter_config.json: not valid JSON");
  expect_error(R"({"peft_type": "LOHA"})", "peft_type 'LOHA' is not one shardtune reads");
  expect_error(R"({"peft_type": "LORA", "r": "four", "target_modules": ["q_proj"]})", "field 'r' has the wrong type");
  expect_error(R"({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]})",
               "has shape 4x32 but this model and adapter_config.json imply 8x32");
  expect_error(R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]})",
               "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight' (shape 4x32) is missing");
  expect_error(R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "alpha_pattern": {"q_proj": 2}})",
               "per-module settings ('alpha_pattern') are not supported");
  expect_error(R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "layers_to_transform": [0]})",
               "'layers_to_transform' is not supported");
  expect_error(R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa"})",
               "init_lora_weights 'pissa' changes the base model's weights");
  expect_error(R"({"peft_type": "IA3", "target_modules": ["q_proj"], "feedforward_modules": []})",
               "'base_model.model.model.layers.0.self_attn.q_proj.ia3_l' (shape 32x1) is missing");
}

// The counting task of the trainer's tests, for a method on our tiny model.
class PeftTrainingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteTinyModel(dir_ / "base", testing::TinyConfig("llama", R"("tie_word_embeddings": false)"), 0);
    std::string train, val;
    for (int n = 0; n < 104; ++n) {
      const int start = (n * 7919) % 45;
      std::string line = "{\"input_ids\": [1";
      for (int i = 0; i < 12; ++i) line += ", " + std::to_string(3 + (start + i) % 45);
      (n < 96 ? train : val) += line + "]}\n";
    }
    testing::WriteText(dir_ / "train.jsonl", train);
    testing::WriteText(dir_ / "val.jsonl", val);
    // A task for methods that steer the model without touching its weights: sequences over a
    // 4-token alphabet (a learnable shift of the output distribution; the best loss is ln 4).
    train.clear();
    val.clear();
    uint64_t state = 5;
    for (int n = 0; n < 104; ++n) {
      std::string line = "{\"input_ids\": [1";
      for (int i = 0; i < 12; ++i) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        line += ", " + std::to_string(20 + (state >> 33) % 4);
      }
      (n < 96 ? train : val) += line + "]}\n";
    }
    testing::WriteText(dir_ / "alphabet-train.jsonl", train);
    testing::WriteText(dir_ / "alphabet-val.jsonl", val);
  }

  JobSpec Spec(const std::string& out, const std::string& method, const std::string& training,
               const std::string& extra = "", const std::string& data = "") {
    const std::string yaml = "name: t\nmodel: {path: base}\nmethod: " + method + "\ndata: {train: " + data +
                             "train.jsonl, validation: " + data +
                             "val.jsonl, format: tokens}\n"
                             "output: {dir: " +
                             out + ", checkpoint_every: 4}\ntraining: " + training + "\n" + extra;
    return ParseJobSpec(yaml, "job.yaml", dir_.path());
  }

  std::map<std::string, at::Tensor> Adapter(const std::string& run) {
    const auto file = SafetensorsFile::Open(dir_ / run / "final" / "adapter_model.safetensors");
    std::map<std::string, at::Tensor> tensors;
    for (const auto& [name, info] : file->tensors()) tensors[name] = ReadTensorFp32(*file, info).clone();
    return tensors;
  }

  ScratchDir dir_;
};

TEST_F(PeftTrainingTest, LoraAdapterHasPeftNamesShapesAndConfig) {
  RunTraining(Spec("lora", "{type: lora, lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}",
                   "{max_steps: 4, micro_batch_size: 8, optimizer: {lr: 1.0e-2}}"));
  const fs::path final_dir = dir_ / "lora" / "final";
  EXPECT_FALSE(fs::exists(final_dir / "model.safetensors"));  // the default export of a PEFT method: the adapter
  const auto file = SafetensorsFile::Open(final_dir / "adapter_model.safetensors");
  std::map<std::string, std::vector<int64_t>> expected;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = fmt::format("base_model.model.model.layers.{}.self_attn.", layer);
    expected[p + "q_proj.lora_A.weight"] = {4, 32};
    expected[p + "q_proj.lora_B.weight"] = {32, 4};
    expected[p + "v_proj.lora_A.weight"] = {4, 32};
    expected[p + "v_proj.lora_B.weight"] = {16, 4};  // 2 kv heads x head_dim 8
  }
  std::map<std::string, std::vector<int64_t>> actual;
  for (const auto& [name, info] : file->tensors()) {
    actual[name] = info.shape;
    EXPECT_EQ(info.dtype, DType::kF32) << name;
    if (name.find("lora_B") != std::string::npos) {  // trained: no longer the zeros it started as
      EXPECT_GT(ReadTensorFp32(*file, info).abs().max().item<double>(), 0.0) << name;
    }
  }
  EXPECT_EQ(actual, expected);
  const json config = json::parse(std::ifstream(final_dir / "adapter_config.json"));
  EXPECT_EQ(config.at("peft_type"), "LORA");
  EXPECT_EQ(config.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(config.at("r"), 4);
  EXPECT_EQ(config.at("lora_alpha"), 8.0);
  EXPECT_EQ(config.at("target_modules"), json({"q_proj", "v_proj"}));
  EXPECT_EQ(config.at("use_dora"), false);
  EXPECT_EQ(config.at("base_model_name_or_path"), (dir_ / "base").string());
}

TEST_F(PeftTrainingTest, EveryMethodLowersTheValidationLoss) {
  // Methods that change weights learn to count (on a random base model); prefix and prompt
  // tuning, which only add context, learn the alphabet task, with the larger learning rate usual
  // for them (Lester et al. use 0.3).
  struct Case {
    std::string name, method, data;
    double lr;
  };
  const std::vector<Case> methods = {
      {"lora", "{type: lora, lora: {r: 8, alpha: 16, target_modules: all-linear}}", "", 1e-2},
      {"dora", "{type: dora, lora: {r: 8, alpha: 16, target_modules: all-linear}}", "", 1e-2},
      {"ia3", "{type: ia3, modules_to_save: [lm_head]}", "", 1e-2},
      {"adapter", "{type: adapter, adapter: {bottleneck: 16, placement: houlsby}}", "", 1e-2},
      {"prefix", "{type: prefix, prefix: {num_virtual_tokens: 8, projection: true, encoder_hidden_size: 32}}",
       "alphabet-", 3e-2},
      {"prompt", "{type: prompt, prompt: {num_virtual_tokens: 8}}", "alphabet-", 1e-1},
  };
  for (const auto& [name, method, data, lr] : methods) {
    SCOPED_TRACE(name);
    // Where it starts: one step at a negligible learning rate.
    const double start = *RunTraining(Spec(name + "-start", method,
                                           "{max_steps: 1, micro_batch_size: 8, optimizer: {lr: 1.0e-12}}", "", data))
                              .last_val_loss;
    const TrainingSummary trained =
        RunTraining(Spec(name, method,
                         fmt::format("{{max_steps: 60, micro_batch_size: 8, global_batch_size: 16, optimizer: {{lr: "
                                     "{}}}, scheduler: {{type: cosine, warmup_steps: 5}}}}",
                                     lr),
                         "", data));
    std::printf("%s: validation loss %.4f -> %.4f\n", name.c_str(), start, *trained.last_val_loss);
    EXPECT_LT(*trained.last_val_loss, 0.75 * start);
    EXPECT_TRUE(fs::exists(dir_ / name / "final" / "adapter_model.safetensors"));
  }
}

TEST_F(PeftTrainingTest, ResumedLoraWithDropoutEqualsTheUninterruptedRun) {
  const std::string method = "{type: lora, lora: {r: 4, dropout: 0.2, target_modules: [q_proj, v_proj, down_proj]}}";
  const std::string training = "{max_steps: 8, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 5.0e-3}}";
  RunTraining(Spec("straight", method, training));
  TrainerOptions interrupt;
  interrupt.stop_after_step = 6;
  RunTraining(Spec("resumed", method, training), interrupt);
  // The checkpoint holds the adapter and its optimizer state only, not the frozen base model.
  const json index = json::parse(std::ifstream(dir_ / "resumed" / "checkpoints" / "step-4" / "index.json"));
  EXPECT_EQ(index.at("parameter_count"), 2 * 4 * ((32 + 32) + (32 + 16) + (64 + 32)));
  const TrainingSummary resumed = RunTraining(Spec("resumed", method, training));
  EXPECT_EQ(resumed.resumed_from_step, 4);
  const auto a = Adapter("straight"), b = Adapter("resumed");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a) EXPECT_TRUE(at::equal(tensor, b.at(name))) << name;
}

TEST_F(PeftTrainingTest, TrainingStartsFromAnExistingAdapter) {
  const std::string method = "{type: lora, lora: {r: 4, target_modules: [q_proj, v_proj]}";
  const TrainingSummary first =
      RunTraining(Spec("first", method + "}", "{max_steps: 8, micro_batch_size: 8, optimizer: {lr: 1.0e-2}}"));
  // One step at a negligible rate from the first run's adapter: its validation loss is the first run's last.
  const std::string from = ", init_from: " + (dir_ / "first" / "final").string() + "}";
  const TrainingSummary second =
      RunTraining(Spec("second", method + from, "{max_steps: 1, micro_batch_size: 8, optimizer: {lr: 1.0e-12}}"));
  EXPECT_NEAR(*second.last_val_loss, *first.last_val_loss, 1e-5);
  // An adapter of another shape is refused, naming the field.
  try {
    RunTraining(Spec("third", "{type: lora, lora: {r: 8, target_modules: [q_proj, v_proj]}" + from,
                     "{max_steps: 1, micro_batch_size: 8}"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("method.init_from"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lora_A.weight' of shape [8, 32]"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "third"));  // refused before anything was written
}

TEST_F(PeftTrainingTest, RecomputationDrawsTheSameDropoutMasks) {
  // Stage 3 recomputes each layer in backward; it must see the masks its forward drew.
  const std::string method = "{type: lora, lora: {r: 4, dropout: 0.3, target_modules: all-linear}}";
  const std::string training = "{max_steps: 4, micro_batch_size: 4, global_batch_size: 8, optimizer: {lr: 5.0e-3}}";
  RunTraining(Spec("stage0", method, training));
  RunTraining(Spec("stage3", method, training, "sharding: {zero_stage: 3}\n"));
  RunTraining(Spec("nodrop", "{type: lora, lora: {r: 4, target_modules: all-linear}}", training));
  const auto a = Adapter("stage0"), b = Adapter("stage3"), c = Adapter("nodrop");
  double difference = 0, dropout_effect = 0;
  for (const auto& [name, tensor] : a) {
    difference = std::max(difference, (tensor - b.at(name)).abs().max().item<double>());
    dropout_effect = std::max(dropout_effect, (tensor - c.at(name)).abs().max().item<double>());
  }
  EXPECT_LT(difference, 1e-6);
  EXPECT_GT(dropout_effect, 1e-4);  // dropout was on
}

TEST_F(PeftTrainingTest, BaseWeightsStayFrozenAndMergedExportEqualsBasePlusAdapter) {
  RunTraining(
      ParseJobSpec("name: t\nmodel: {path: base}\nmethod: {type: ia3}\n"
                   "data: {train: train.jsonl, format: tokens}\n"
                   "output: {dir: merged, export: [hf, peft]}\n"
                   "training: {max_steps: 4, micro_batch_size: 8, optimizer: {lr: 1.0e-2}}\n",
                   "job.yaml", dir_.path()));
  const LoadedModel merged = LoadModelForInference(dir_ / "merged" / "final");
  const LoadedModel adapted = LoadModelForInference(dir_ / "base", dir_ / "merged" / "final");
  const at::Tensor ids = at::tensor(std::vector<int64_t>{1, 7, 8, 9, 10}, at::kLong).view({1, -1});
  at::NoGradGuard no_grad;
  EXPECT_LT(
      (merged.model->Forward(ids, at::Tensor()) - adapted.model->Forward(ids, at::Tensor())).abs().max().item<double>(),
      1e-5);
  // Weights IA3 does not touch are the base model's, bit for bit.
  const LoadedModel base = LoadModelForInference(dir_ / "base");
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "lm_head.weight"}) {
    EXPECT_TRUE(
        at::equal(merged.weights->Value(*merged.weights->Find(name)), base.weights->Value(*base.weights->Find(name))))
        << name;
  }
}

}  // namespace
}  // namespace shardtune
