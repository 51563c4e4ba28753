// Parameter-efficient methods on every ZeRO stage and world size compute the single-process
// run: the loss at every step, the adapter and the merged model equal those of RunTraining on
// one process at stage 0 (rtol 1e-5, fp32). Also: only trainable parameters hold optimizer
// state and gradients, and a PEFT checkpoint resumes on another world size.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "classification_tasks.h"
#include "common/atomic_file.h"
#include "common/safetensors.h"
#include "run_comparison.h"
#include "tiny_models.h"
#include "worker/generate.h"
#include "worker/models/hf_io.h"
#include "worker/trainer.h"
#include "world.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::World;

class PeftZeroTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(testing::SharedScratchDir("peft-zero"));
    if (World().rank() == 0) {
      // qwen2: q/k/v biases, which IA3 scales when it merges.
      testing::WriteTinyModel(*dir_ / "tiny", testing::TinyConfig("qwen2", R"("tie_word_embeddings": false)"), 5);
      std::string text;
      for (int n = 0; n < 48; ++n) {
        text += "{\"input_ids\": [1";
        for (int i = 0; i < 14 - n % 3; ++i) text += ", " + std::to_string(3 + (n * 7919 + i) % 45);
        text += "]}\n";
      }
      testing::WriteText(*dir_ / "data.jsonl", text);
    }
    World().Barrier(CollectiveTag{"setup"});
  }
  static void TearDownTestSuite() {
    World().Barrier(CollectiveTag{"teardown"});
    if (World().rank() == 0) fs::remove_all(*dir_);
    delete dir_;
  }

  static JobSpec Spec(const std::string& method, const std::string& out, int stage, int64_t micro, int64_t global,
                      const std::string& dtype = "fp32", const std::string& quantization = "none") {
    const std::string yaml = fmt::format(
        "name: t\nmodel: {{path: tiny, dtype: {}, quantization: {{type: {}}}}}\nmethod: {}\n"
        "data: {{train: data.jsonl, format: tokens}}\n"
        "output: {{dir: {}, export: [{}]}}\n"
        "training: {{max_steps: 6, micro_batch_size: {}, global_batch_size: {}, optimizer: {{lr: 2.0e-3, "
        "weight_decay: 0.1}}, scheduler: {{type: cosine, warmup_steps: 2}}}}\n"
        "sharding: {{zero_stage: {}}}\n",
        dtype, quantization, method, out,
        method.find("lora") != std::string::npos || method.find("ia3") != std::string::npos ? "hf, peft" : "peft",
        micro, global, stage);
    return ParseJobSpec(yaml, "job.yaml", *dir_);
  }

  static std::vector<json> Metrics(const fs::path& run) { return testing::ReadMetrics(run); }

  static std::map<std::string, at::Tensor> Adapter(const fs::path& run) {
    const auto file = SafetensorsFile::Open(run / "final" / "adapter_model.safetensors");
    std::map<std::string, at::Tensor> tensors;
    for (const auto& [name, info] : file->tensors()) tensors[name] = ReadTensorFp32(*file, info).clone();
    return tensors;
  }

  static void ExpectSameRun(const fs::path& run, const fs::path& reference) {
    testing::ExpectSameLosses(run, reference);
    const auto sharded = Adapter(run), single = Adapter(reference);
    ASSERT_EQ(sharded.size(), single.size());
    for (const auto& [name, tensor] : single) {
      ASSERT_TRUE(sharded.count(name)) << name;
      EXPECT_GT(tensor.numel(), 0) << name;
      EXPECT_TRUE(at::allclose(sharded.at(name), tensor, 1e-5, 1e-6))
          << name << ": max difference " << (sharded.at(name) - tensor).abs().max().item<double>();
    }
    if (fs::exists(reference / "final" / "model.safetensors")) {  // the merged model
      const LoadedModel x = LoadModelForInference(run / "final"), y = LoadModelForInference(reference / "final");
      EXPECT_TRUE(at::allclose(x.weights->values(), y.weights->values(), 1e-5, 1e-6));
    }
  }

  static fs::path* dir_;
};

fs::path* PeftZeroTest::dir_ = nullptr;

TEST_F(PeftZeroTest, EveryMethodOnEveryStageEqualsTheSingleProcessRun) {
  const int n = World().size();
  struct Case {
    std::string name, method;
    std::vector<int> stages;
  };
  const std::vector<Case> cases = {
      {"lora", "{type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}", {1, 2, 3}},
      {"ia3", "{type: ia3}", {1, 2, 3}},
      {"dora",
       "{type: dora, lora: {r: 4, target_modules: [q_proj, v_proj, down_proj]}, modules_to_save: [lm_head]}",
       {3}},
      {"adapter", "{type: adapter, adapter: {bottleneck: 8, placement: houlsby}}", {3}},
      {"prefix", "{type: prefix, prefix: {num_virtual_tokens: 4, projection: true}}", {3}},
      {"prompt", "{type: prompt, prompt: {num_virtual_tokens: 4}}", {3}},
  };
  for (const Case& c : cases) {
    for (int64_t accumulation : {int64_t{1}, int64_t{2}}) {
      if (accumulation == 2 && c.name != "lora") continue;
      const int64_t micro = 2, global = micro * n * accumulation;
      const fs::path reference = *dir_ / fmt::format("ref-{}-{}", c.name, global);
      if (World().rank() == 0 && !fs::exists(reference / "final"))
        RunTraining(Spec(c.method, reference.string(), 0, micro, global));
      World().Barrier(CollectiveTag{"reference"});
      for (int stage : c.stages) {
        SCOPED_TRACE(fmt::format("{} stage {} np {} accumulation {}", c.name, stage, n, accumulation));
        const fs::path out = *dir_ / fmt::format("run-{}-s{}-a{}", c.name, stage, accumulation);
        RunTraining(Spec(c.method, out.string(), stage, micro, global), World());
        World().Barrier(CollectiveTag{"compare"});
        ExpectSameRun(out, reference);
      }
    }
  }
}

TEST_F(PeftZeroTest, QuantizedBaseOnEveryStageEqualsTheSingleProcessRun) {
  // QLoRA: the base's linear weights in 4 bits (NF4 with double quantization; FP4 without),
  // gathered as bytes at stage 3 and dequantized for each use; the merged model is the adapter
  // merged into the original weights.
  const int n = World().size();
  struct Case {
    std::string name, method, quantization;
    std::vector<int> stages;
  };
  const std::vector<Case> cases = {
      {"qlora-nf4", "{type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}", "nf4", {1, 2, 3}},
      {"qdora-fp4",
       "{type: dora, lora: {r: 4, target_modules: [q_proj, v_proj, down_proj]}}",
       "fp4, double_quant: false, block_size: 128",
       {3}},
  };
  for (const Case& c : cases) {
    const int64_t micro = 2, global = micro * n;
    const fs::path reference = *dir_ / fmt::format("ref-{}-{}", c.name, global);
    if (World().rank() == 0 && !fs::exists(reference / "final"))
      RunTraining(Spec(c.method, reference.string(), 0, micro, global, "fp32", c.quantization));
    World().Barrier(CollectiveTag{"reference"});
    for (int stage : c.stages) {
      SCOPED_TRACE(fmt::format("{} stage {} np {}", c.name, stage, n));
      const fs::path out = *dir_ / fmt::format("run-{}-s{}", c.name, stage);
      RunTraining(Spec(c.method, out.string(), stage, micro, global, "fp32", c.quantization), World());
      World().Barrier(CollectiveTag{"compare"});
      ExpectSameRun(out, reference);
    }
  }
  if (World().rank() != 0) return;
  // The base really is 4-bit: the first loss differs from the full-precision base's, a little.
  const fs::path lora = *dir_ / "ref-lora-plain";
  if (!fs::exists(lora / "final")) RunTraining(Spec(cases[0].method, lora.string(), 0, 2, 2 * n));
  const double quantized = Metrics(*dir_ / fmt::format("ref-qlora-nf4-{}", 2 * n)).front()["loss"].get<double>();
  const double plain = Metrics(lora).front()["loss"].get<double>();
  EXPECT_NE(quantized, plain);
  EXPECT_NEAR(quantized, plain, 0.05 * plain);
  // The model card says what the adapter was trained on, as PEFT's does.
  const std::string card = ReadFile(*dir_ / fmt::format("ref-qlora-nf4-{}", 2 * n) / "final" / "README.md");
  EXPECT_NE(card.find("---\nbase_model: "), std::string::npos) << card;
  EXPECT_NE(card.find("library_name: peft"), std::string::npos) << card;
  EXPECT_NE(card.find("- load_in_4bit: True\n- bnb_4bit_quant_type: nf4\n- bnb_4bit_use_double_quant: True\n"
                      "- bnb_4bit_compute_dtype: float32"),
            std::string::npos)
      << card;
  EXPECT_EQ(ReadFile(lora / "final" / "README.md").find("bitsandbytes"), std::string::npos);
  // The merged model is the original weight plus scale B A (scale = alpha / r = 2), not the
  // dequantized weight plus it.
  const fs::path run = *dir_ / fmt::format("ref-qlora-nf4-{}", 2 * n);
  const auto adapter = Adapter(run);
  const std::string q = "model.layers.1.self_attn.q_proj";
  const at::Tensor a = adapter.at("base_model.model." + q + ".lora_A.weight");
  const at::Tensor b = adapter.at("base_model.model." + q + ".lora_B.weight");
  const auto merged = SafetensorsFile::Open(run / "final" / "model.safetensors");
  const auto base = SafetensorsFile::Open(*dir_ / "tiny" / "model.safetensors");
  const at::Tensor w = ReadTensorFp32(*merged, merged->tensors().at(q + ".weight"));
  const at::Tensor w0 = ReadTensorFp32(*base, base->tensors().at(q + ".weight"));
  EXPECT_GT(b.abs().max().item<double>(), 0);
  EXPECT_TRUE(at::allclose(w, w0 + 2.0 * at::matmul(b, a), 1e-5, 1e-6))
      << "max difference " << (w - w0 - 2.0 * at::matmul(b, a)).abs().max().item<double>();
}

TEST_F(PeftZeroTest, HybridShardingEqualsTheSingleProcessRun) {
  const int n = World().size();
  if (n < 4) GTEST_SKIP() << "hybrid sharding needs 4 ranks (2 groups of 2)";
  const std::string method = "{type: lora, lora: {r: 4, alpha: 8, target_modules: all-linear}}";
  const fs::path reference = *dir_ / fmt::format("ref-lora-{}", 2 * n);  // written by the test above
  if (World().rank() == 0 && !fs::exists(reference / "final"))
    RunTraining(Spec(method, reference.string(), 0, 2, 2 * n));
  World().Barrier(CollectiveTag{"reference"});
  JobSpec spec = Spec(method, (*dir_ / "hybrid").string(), 3, 2, 2 * n);
  spec.sharding.shard_group_size = 2;
  RunTraining(spec, World());
  World().Barrier(CollectiveTag{"compare"});
  ExpectSameRun(*dir_ / "hybrid", reference);
}

TEST_F(PeftZeroTest, OnlyTrainableParametersHoldGradientsAndOptimizerState) {
  // bf16 at stage 3: per trainable parameter, a 4-byte gradient shard and 12 bytes of fp32 master
  // weights and moments, divided over the ranks: 16 x trainable / N (plus alignment padding).
  const int n = World().size();
  const fs::path out = *dir_ / "memory";
  RunTraining(Spec("{type: lora, lora: {r: 4, target_modules: [q_proj, v_proj]}}", out.string(), 3, 2, 2 * n, "bf16"),
              World());
  World().Barrier(CollectiveTag{"memory"});
  const int64_t trainable = 2 * 4 * ((32 + 32) + (32 + 16));  // 2 layers, r 4, q (32 -> 32) and v (32 -> 16)
  const json first = Metrics(out).front();
  const double state = first["optimizer_bytes"].get<double>() + first["grad_bytes"].get<double>();
  EXPECT_GE(state, 16.0 * trainable / n);
  EXPECT_LE(state, 16.0 * (trainable + 2 * 16 * n) / n);  // each of 2 adapter units pads by < 16 x N elements
  // The frozen base model is held once, in bf16, sharded: about 2 bytes per parameter / N.
  const double base = LlamaConfig::Load(*dir_ / "tiny").num_parameters();
  EXPECT_LT(first["param_bytes"].get<double>(), 2.0 * (base + trainable) / n + 2.0 * 16 * n * 8);
}

TEST_F(PeftZeroTest, AdapterCheckpointResumesOnAnotherWorldSize) {
  const int n = World().size();
  const std::string method = "{type: lora, lora: {r: 4, target_modules: [q_proj, k_proj, up_proj]}}";
  const fs::path reference = *dir_ / "resume-ref";
  if (World().rank() == 0) RunTraining(Spec(method, reference.string(), 0, 1, 4));
  World().Barrier(CollectiveTag{"reference"});
  // Saved by every rank at stage 3, resumed by half of them (or one) at stage 2.
  JobSpec saved = Spec(method, (*dir_ / "resume").string(), 3, 4 / n, 4);
  saved.output.checkpoint_every = 3;
  TrainerOptions interrupt;
  interrupt.stop_after_step = 3;
  RunTraining(saved, World(), interrupt);
  const int half = std::max(1, n / 2);
  auto group = World().Split(World().rank() < half ? 0 : 1, World().rank(), "resume group");
  if (World().rank() < half) {
    JobSpec resumed = Spec(method, (*dir_ / "resume").string(), 2, 4 / half, 4);
    resumed.output.checkpoint_every = 3;
    EXPECT_EQ(RunTraining(resumed, *group).resumed_from_step, 3);
  }
  World().Barrier(CollectiveTag{"compare"});
  ExpectSameRun(*dir_ / "resume", reference);
}

// evaluation.generate on many ranks: each answers its share of the validation prompts with the
// sharded model, and the figures (sums over ranks) equal the single-process run's, greedy and
// sampled (each answer seeded by itself), with full fine-tuning and with prompt tuning's virtual
// tokens before every sequence.
TEST_F(PeftZeroTest, GenerationMetricsEqualTheSingleProcessRun) {
  const int n = World().size();
  const fs::path dir = *dir_ / "generation";
  if (World().rank() == 0) {
    testing::WriteByteLevelModel(dir / "bytes", 3);
    for (const auto& [name, count] : {std::pair{"train", 32}, std::pair{"val", 7}}) {
      std::string text;
      for (int i = 0; i < count; ++i) {
        const int from = (i * 3 + count) % 7;
        text += json({{"prompt", fmt::format("after {}:", from)},
                      {"completion", fmt::format(" {} {} {}", from + 1, from + 2, from + 3)}})
                    .dump() +
                "\n";
      }
      testing::WriteText(dir / (std::string(name) + ".jsonl"), text);
    }
  }
  World().Barrier(CollectiveTag{"setup"});
  const auto spec = [&](const std::string& method, double lr, const std::string& generate, const fs::path& out,
                        int stage) {
    return ParseJobSpec(
        fmt::format("name: t\nmodel: {{path: bytes}}\nmethod: {}\n"
                    "data: {{train: train.jsonl, validation: val.jsonl, format: completion}}\n"
                    "training: {{max_steps: 8, eval_every: 4, micro_batch_size: 2, global_batch_size: {}, "
                    "optimizer: {{lr: {}}}}}\n"
                    "evaluation: {{generate: {}}}\nsharding: {{zero_stage: {}}}\noutput: {{dir: {}}}\n",
                    method, 2 * n, lr, generate, stage, out.string()),
        "job.yaml", dir);
  };
  const std::string greedy = "{metrics: [exact_match, rouge_l, bleu], max_new_tokens: 10}";
  const std::string sampled =
      "{metrics: [rouge_l, bleu], max_new_tokens: 10, num_samples: 2, temperature: 0.8, top_p: 0.9}";
  struct Case {
    std::string name, method;
    double lr;
    std::string generate;
  };
  for (const Case& c :
       {Case{"full-greedy", "{type: full}", 1e-2, greedy}, Case{"full-sampled", "{type: full}", 1e-2, sampled},
        Case{"prompt", "{type: prompt, prompt: {num_virtual_tokens: 3}}", 1e-2, greedy}}) {
    SCOPED_TRACE(c.name + " np " + std::to_string(n));
    const fs::path reference = dir / ("ref-" + c.name + "-" + std::to_string(n));
    if (World().rank() == 0) RunTraining(spec(c.method, c.lr, c.generate, reference, 0));
    World().Barrier(CollectiveTag{"reference"});
    const fs::path out = dir / ("run-" + c.name);
    RunTraining(spec(c.method, c.lr, c.generate, out, 3), World());
    World().Barrier(CollectiveTag{"compare"});
    std::vector<json> sharded, single;
    for (const json& line : Metrics(out))
      if (line.contains("val_loss")) sharded.push_back(line);
    for (const json& line : Metrics(reference))
      if (line.contains("val_loss")) single.push_back(line);
    ASSERT_EQ(sharded.size(), 2u);
    ASSERT_EQ(single.size(), 2u);
    for (size_t e = 0; e < 2; ++e) {
      EXPECT_EQ(sharded[e].at("generated"), c.name == "full-sampled" ? 14 : 7);
      for (const char* name : {"exact_match", "rouge_l", "bleu"}) {
        EXPECT_EQ(sharded[e].contains(name), single[e].contains(name)) << name;
        if (!single[e].contains(name)) continue;
        EXPECT_NEAR(sharded[e].at(name).get<double>(), single[e].at(name).get<double>(), 1e-9)
            << name << " at evaluation " << e + 1;
      }
    }
    // (Prompt tuning learns too little in 8 steps to answer in part; its case checks the offset of
    // the virtual tokens runs alike.)
    if (c.name != "prompt")
      EXPECT_GT(single.back().at("rouge_l").get<double>(), 0.0) << "nothing learned: the comparison would mean little";
    World().Barrier(CollectiveTag{"next"});
  }
}

}  // namespace
}  // namespace shardtune
