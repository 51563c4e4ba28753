// The memory planner: exact parameter counts for real model shapes, ZeRO model-state figures
// against DeepSpeed's published estimator, PEFT counts, verdicts and suggestions. (Against what
// the engine allocates, ModelStateBytesIsWhatTheEngineAllocates, and what runs report:
// tests/mpi/zero_test.cc, which link LibTorch.)
#include "sharding/planner.h"

#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "sharding/model_layout.h"
#include "sharding/zero_stage.h"
#include "test_util.h"

namespace shardtune {
namespace {

// A plan's input with the defaults and one of examples/models/.
PlanInput Example(const std::string& name) {
  const std::string path = std::string(SHARDTUNE_SOURCE_DIR) + "/examples/models/" + name;
  PlanInput in;
  in.model = ModelConfig::Parse(ReadFile(path), path);
  return in;
}

TEST(Planner, CountsTheParametersOfRealShapesExactly) {
  // The figures Hugging Face reports for these models.
  EXPECT_EQ(MakePlan(Example("llama-7b.json")).parameters, 6738415616);
  EXPECT_EQ(MakePlan(Example("llama-13b.json")).parameters, 13015864320);
  EXPECT_EQ(MakePlan(Example("llama-70b.json")).parameters, 68976648192);
  EXPECT_EQ(MakePlan(Example("llama-405b.json")).parameters, 405853388800);
  // PEFT's figure for LoRA r=8 on q_proj and v_proj of Llama-2-7B: 4,194,304.
  PlanInput lora = Example("llama-7b.json");
  lora.method.type = MethodType::kLora;
  lora.method.lora.r = 8;
  EXPECT_EQ(MakePlan(lora).trainable_parameters, 4194304);
}

TEST(Planner, PlansBertModels) {
  PlanInput bert = Example("bert-base-cased.json");
  EXPECT_EQ(MakePlan(bert).parameters, 108310272);  // transformers' count for bert-base-cased, pooler included
  bert.method.type = MethodType::kLora;
  bert.method.lora.r = 8;
  EXPECT_EQ(MakePlan(bert).trainable_parameters, 294912);  // PEFT's: r=8 on its BERT defaults, query and value
  bert.method.modules_to_save = {"pooler"};
  EXPECT_EQ(MakePlan(bert).trainable_parameters, 294912 + 768 * 768 + 768);
}

TEST(Planner, ModelStatesAgreeWithDeepSpeedsEstimator) {
  // DeepSpeed's estimate_zero3_model_states_mem_needs (no offload): 18 bytes per parameter over
  // the ranks (fp16/bf16 parameters 2, gradients 4 as ours are fp32 shards, fp32 master
  // weights and moments 12) plus the largest layer gathered. Ours are the same 18 bytes, unit
  // padding aside; the gathered units are counted under buffers.
  for (const char* name : {"llama-7b.json", "llama-70b.json", "llama-100b-class.json"}) {
    SCOPED_TRACE(name);
    PlanInput in = Example(name);
    in.ranks = 1024;
    in.zero_stage = 3;
    in.dtype = ComputeDType::kBf16;
    const Plan plan = MakePlan(in);
    const double deepspeed = 18.0 * static_cast<double>(plan.parameters) / 1024;
    EXPECT_NEAR(static_cast<double>(plan.device.model_states()) / deepspeed, 1.0, 0.01);
    // Stage 2 keeps whole bf16 parameters: 2 P + 16 P / N.
    in.zero_stage = 2;
    const Plan two = MakePlan(in);
    const double expected = 2.0 * plan.parameters + 16.0 * plan.parameters / 1024;
    EXPECT_NEAR(static_cast<double>(two.device.model_states()) / expected, 1.0, 0.01);
    // With the optimizer offloaded, its 12 bytes move to the host, with the fp32 copy of the
    // gradient shard it steps from: 16 bytes per parameter over the ranks, DeepSpeed's host
    // figure for ZeRO-Offload of the optimizer alone (before its 1.5 buffer factor).
    in.zero_stage = 3;
    in.offload_optimizer = true;
    const Plan offloaded = MakePlan(in);
    EXPECT_EQ(offloaded.device.optimizer, 0);
    EXPECT_NEAR(static_cast<double>(offloaded.host.optimizer) / (16.0 * plan.parameters / 1024), 1.0, 0.01);
  }
}

TEST(Planner, JudgesAndSuggests) {
  PlanInput in = Example("llama-70b.json");
  in.ranks = 16;
  in.zero_stage = 0;
  in.device_memory_bytes = 80.0 * (1 << 30);
  in.seq_len = 4096;
  const Plan plan = MakePlan(in);
  ASSERT_TRUE(plan.verdict_known);
  EXPECT_FALSE(plan.fits);  // 70B with AdamW unsharded on 80 GiB devices: no
  EXPECT_LT(plan.margin_bytes, 0);
  ASSERT_FALSE(plan.suggestions.empty());
  EXPECT_NE(plan.suggestions[0].find("sharding.zero_stage: 3 with training.activation_checkpointing: true with "
                                     "offload_optimizer: cpu"),
            std::string::npos)
      << plan.suggestions[0];
  in.zero_stage = 3;
  in.ranks = 64;
  // 4096-token sequences of a 70B model: the kept activations alone exceed a device.
  EXPECT_FALSE(MakePlan(in).fits);
  in.activation_checkpointing = true;
  const Plan sharded = MakePlan(in);
  EXPECT_TRUE(sharded.fits);
  EXPECT_NE(PlanToJson(sharded).find("\"parameters\": 68976648192"), std::string::npos);
  EXPECT_NE(PlanToText(sharded).find("fits:"), std::string::npos);
  // More ranks never need more memory per rank.
  in.ranks = 128;
  EXPECT_LT(MakePlan(in).device.total(), sharded.device.total());
}

TEST(Planner, PlansA100BModelOn1024RanksWithoutTensors) {
  PlanInput in = Example("llama-100b-class.json");
  in.ranks = 1024;
  in.zero_stage = 3;
  in.activation_checkpointing = true;
  in.device_memory_bytes = 141.0 * (1 << 30);
  const Plan plan = MakePlan(in);
  EXPECT_GT(plan.parameters, 100000000000);
  EXPECT_TRUE(plan.fits);
}

TEST(Planner, CountsA4BitBaseAndSuggestsQlora) {
  // LoRA r 16 on the 100B-class model, one 141 GiB device: the bf16 base alone is 215 GB.
  PlanInput in = Example("llama-100b-class.json");
  in.method.type = MethodType::kLora;
  in.method.lora.r = 16;
  in.ranks = 1;
  in.device_memory_bytes = 141.0 * (1 << 30);
  in.activation_checkpointing = true;
  const Plan lora = MakePlan(in);
  EXPECT_FALSE(lora.fits);
  ASSERT_FALSE(lora.suggestions.empty());
  EXPECT_NE(lora.suggestions[0].find("model.quantization: {type: nf4}"), std::string::npos) << lora.suggestions[0];

  in.quantization = QuantizationSpec{QuantizationType::kNf4, 64, true};
  const Plan qlora = MakePlan(in);
  EXPECT_TRUE(qlora.fits);
  EXPECT_NE(PlanToText(qlora).find("base in 4 bits (nf4)"), std::string::npos) << PlanToText(qlora);
  // Every layer weight here is whole records of 16,384 elements: 8,456 bytes each (0.516 a
  // parameter); the embedding, head and norms stay bf16, and so do the adapter's parameters.
  int64_t linear = 0, other = 0;
  for (const ParameterSpec& p : ModelParameterSpecs(in.model)) {
    const bool layer_weight = p.shape.size() == 2 && p.name.rfind("model.layers.", 0) == 0;
    (layer_weight ? linear : other) += NumelOf(p.shape);
  }
  EXPECT_EQ(linear % 16384, 0);
  const int64_t expected = linear / 16384 * 8456 + 2 * (other + qlora.trainable_parameters);
  EXPECT_NEAR(static_cast<double>(qlora.device.parameters), static_cast<double>(expected), 1e-4 * expected);
  EXPECT_LT(qlora.device.parameters, 0.55 * 2 * lora.device.parameters / 2);  // about a quarter of bf16's
  // Two 80 GiB devices at stage 3: each holds half of the records.
  in.ranks = 2;
  in.zero_stage = 3;
  in.device_memory_bytes = 80.0 * (1 << 30);
  const Plan two = MakePlan(in);
  EXPECT_TRUE(two.fits);
  EXPECT_NEAR(static_cast<double>(two.device.parameters), expected / 2.0, 1e-3 * expected);
}

TEST(Planner, ModelStateBytesFollowsTheStageTable) {
  // Two units of 100 and 50 elements: padded to 112 + 64 on one shard, to 128 + 64 on four
  // (shards of 32 + 16 = 48 elements).
  const std::vector<UnitSpec> units = {UnitSpec{"a", {ParameterSpec{"a.w", {100}}}},
                                       UnitSpec{"b", {ParameterSpec{"b.w", {50}}}}};
  const ShardedLayout whole = PlanLayout(units, 1), sharded = PlanLayout(units, 4);
  auto bytes = [](const ShardedLayout& layout, int stage, int64_t compute_bytes, int64_t threshold = 0) {
    const MemoryAccount m = ModelStateBytes(layout, ModelStateConfig{stage, compute_bytes, false, threshold});
    return std::vector<int64_t>{m.parameters, m.gradients, m.optimizer};
  };
  // bf16: parameters 2 bytes, gradients 4 (stage 1: the whole buffer too), master and moments 12.
  EXPECT_EQ(bytes(whole, 0, 2), (std::vector<int64_t>{2 * 176, 4 * 176, 12 * 176}));
  EXPECT_EQ(bytes(sharded, 1, 2), (std::vector<int64_t>{2 * 192, 4 * 48 + 4 * 192, 12 * 48}));
  EXPECT_EQ(bytes(sharded, 2, 2), (std::vector<int64_t>{2 * 192, 4 * 48, 12 * 48}));
  EXPECT_EQ(bytes(sharded, 3, 2), (std::vector<int64_t>{2 * 48, 4 * 48, 12 * 48}));
  // fp32: the master weights are the parameters (no copy); units under the threshold stay gathered.
  EXPECT_EQ(bytes(sharded, 3, 4), (std::vector<int64_t>{4 * 48, 4 * 48, 8 * 48}));
  EXPECT_EQ(bytes(sharded, 3, 2, 101), (std::vector<int64_t>{2 * 48 + 2 * 192, 4 * 48, 12 * 48}));
  // A frozen unit holds its parameters only.
  ShardedLayout frozen_b = sharded;
  frozen_b.units[1].trainable = false;
  EXPECT_EQ(bytes(frozen_b, 2, 2), (std::vector<int64_t>{2 * 192, 4 * 32, 12 * 32}));
}

}  // namespace
}  // namespace shardtune
