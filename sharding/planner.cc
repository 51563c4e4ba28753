#include "sharding/planner.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>

#include "sharding/model_layout.h"
#include "sharding/parameter_layout.h"
#include "sharding/prequantized.h"
#include "sharding/zero_stage.h"

namespace shardtune {

namespace {

using nlohmann::json;

int64_t Bytes(ComputeDType dtype) { return dtype == ComputeDType::kFp32 ? 4 : 2; }

// "none", or the 4-bit type's name.
std::string QuantizationName(const QuantizationSpec& spec) {
  const std::optional<Quant4Format> format = Quant4FormatOf(spec);
  return format ? std::string(Quant4TypeName(format->type)) : "none";
}

// Whether a PEFT target list picks linear module `module` (matched as PEFT matches: the end of
// its path, or a pattern the whole path of layer 0's module matches).
bool Targets(const ModelConfig& c, const std::vector<std::string>& names, bool pattern, const LinearModule& module) {
  const std::string path = c.LayerPrefix(0) + module.path;
  if (pattern) return names[0] == "all-linear" || std::regex_match(path, std::regex(names[0]));
  for (const auto& n : names) {
    if (path.size() > n.size() && path.compare(path.size() - n.size(), n.size(), n) == 0 &&
        path[path.size() - n.size() - 1] == '.')
      return true;
  }
  return false;
}

struct ModelStates {
  MemoryByKind device, host;
};

// Bytes per token and layer that the attention keeps for backward, by the kernel that runs it
// (worker/models/fused_ops.h): an explicit softmax keeps the heads x S scores in the compute
// dtype and their fp32 probabilities; shardtune's fp32 CPU attention the probabilities alone
// (without attention dropout); on GPUs, the fused attention of LibTorch 2.2 and later (flash, or
// memory-efficient with a mask) no scores at all, only an fp32 log-sum-exp per head. BERT
// always takes the explicit softmax.
double AttentionBytesPerToken(const PlanInput& in) {
  const ModelConfig& c = in.model;
  const double heads = static_cast<double>(c.num_attention_heads()), seq = static_cast<double>(in.seq_len);
  const bool llama = c.family != ModelFamily::kBert;
#ifdef SHARDTUNE_FUSED_GPU_ATTENTION
  if (llama && in.on_gpu) return heads * 4;
#endif
  const bool cpu_fused = llama && !in.on_gpu && in.dtype == ComputeDType::kFp32 && c.llama.attention_dropout == 0;
  if (cpu_fused) return heads * seq * 4;
  return heads * seq * static_cast<double>(Bytes(in.dtype) + 4);
}

// The units a ZeroEngine would hold for this plan on `shards` shards: the model's, all trainable
// for full fine-tuning; under a PEFT method the model's frozen, and the method's parameters as one
// trainable unit of exactly their count (the adapters' own small units: their padding is not
// counted), whose shard is the count over the shards, rounded up.
// Under QLoRA the frozen layers' linear weights are units of 4-bit records (QuantizedBaseUnits).
ShardedLayout PlannedLayout(const PlanInput& in, int64_t trainable_parameters, int64_t shards) {
  std::vector<UnitSpec> units = ModelUnits(in.model);
  if (in.method.type == MethodType::kFull) return PlanLayout(units, static_cast<int>(shards));
  for (UnitSpec& unit : units) unit.trainable = false;
  if (const auto format = Quant4FormatOf(in.quantization)) units = QuantizedBaseUnits(std::move(units), *format);
  ShardedLayout layout = PlanLayout(units, static_cast<int>(shards));
  UnitLayout method;
  method.name = ToString(in.method.type);
  method.numel = method.padded = trainable_parameters;
  method.shard_size = (trainable_parameters + shards - 1) / shards;
  layout.units.push_back(std::move(method));
  return layout;
}

// Per-rank bytes of one configuration: the model states as ZeroEngine holds them
// (ModelStateBytes), the buffers of its schedule, and the activations.
ModelStates Estimate(const PlanInput& in, const Plan& plan) {
  const ModelConfig& c = in.model;
  const int64_t b = Bytes(in.dtype);
  const StagePolicy& policy = PolicyOfStage(in.zero_stage);
  const int64_t shards = policy.shards_optimizer_state ? (in.shard_group_size > 0 ? in.shard_group_size : in.ranks) : 1;
  int64_t largest_padded = 0;  // of the model's units (a PEFT method's are small)
  for (const auto& unit : PlanLayout(ModelUnits(c), static_cast<int>(shards)).units) {
    largest_padded = std::max(largest_padded, unit.padded);
  }
  // Offloaded, the master weights, the moments and the gradient's copy live in host memory.
  const bool offloaded = in.offload_optimizer && in.on_gpu;
  const ShardedLayout layout = PlannedLayout(in, plan.trainable_parameters, shards);
  const MemoryAccount held =
      ModelStateBytes(layout, ModelStateConfig{in.zero_stage, b, offloaded, in.persistence_threshold});
  // Under QLoRA a gathered unit is at most the largest of the unquantized units and the 4-bit
  // ones' bytes, and one 4-bit unit at a time is dequantized into the compute dtype.
  int64_t largest_gathered = largest_padded * b, largest_dequantized = 0;
  if (in.quantization.type != QuantizationType::kNone && in.method.type != MethodType::kFull) {
    largest_gathered = 0;
    for (size_t u = 0; u + 1 < layout.units.size(); ++u) {  // the last is the method's
      const UnitLayout& unit = layout.units[u];
      largest_gathered = std::max(largest_gathered, unit.StoredBytes(unit.padded, b));
      if (unit.quant4) largest_dequantized = std::max(largest_dequantized, unit.padded * b);
    }
  }
  MemoryByKind m;
  m.parameters = held.parameters;
  m.gradients = held.gradients;
  m.optimizer = held.optimizer;
  // Buffers: sharded parameters are gathered for the unit in use and `prefetch_layers` ahead;
  // sharded gradients hold whole-unit gradients while they are reduced (the unit whose backward
  // runs, and the reductions in flight).
  if (policy.shards_parameters) m.buffers += (1 + in.prefetch_layers) * largest_gathered;
  m.buffers += largest_dequantized;
  if (policy.shards_gradients && in.method.type == MethodType::kFull) {
    m.buffers += (1 + kReductionsInFlight) * largest_padded * 4;
  }
  // Activations, per micro-batch of B x S tokens. Per token and layer the forward saves about
  // 10 h (norms, residuals, projections' outputs) + 4 q (q, rotated q, repeated k and v) + 3 kv
  // + 4 f (gate, up, their product) values, and what the attention keeps of its heads x S
  // scores (AttentionBytesPerToken). Checkpointing keeps each layer's input and one layer's
  // whole activations while it is recomputed. The logits and their gradient are fp32.
  const double tokens = static_cast<double>(in.micro_batch) * static_cast<double>(in.seq_len);
  // (BERT's layer saves about as much: its GELU input and output stand in for gate and up.)
  const double q = static_cast<double>(c.num_attention_heads() * c.head_dim());
  const double kv = static_cast<double>(c.num_key_value_heads() * c.head_dim());
  const double h = static_cast<double>(c.hidden_size());
  const double f =
      static_cast<double>(c.family == ModelFamily::kBert ? c.bert.intermediate_size : c.llama.intermediate_size);
  const double per_layer = tokens * ((10 * h + 4 * q + 3 * kv + 4 * f) * b + AttentionBytesPerToken(in));
  const double layers = static_cast<double>(c.num_layers());
  const double saved = in.activation_checkpointing ? layers * tokens * h * b + per_layer : layers * per_layer;
  const int64_t logits = c.task() == ModelTask::kCausalLm ? c.vocab_size() : c.num_labels();
  m.activations = static_cast<int64_t>(saved + 2 * tokens * static_cast<double>(logits) * 4);

  ModelStates states;
  if (!in.on_gpu) {
    states.host = m;
    return states;
  }
  states.device = m;
  if (offloaded) {  // master weights, moments and the gradient's copy on the host, as ZeRO-Offload keeps them
    states.host.optimizer = m.optimizer;
    states.device.optimizer = 0;
  }
  return states;
}

// Fills the memory figures and the verdict (against device memory, or host memory per rank when
// training on CPUs).
void Evaluate(Plan& plan) {
  const ModelStates states = Estimate(plan.input, plan);
  plan.device = states.device;
  plan.host = states.host;
  if (plan.input.device_memory_bytes <= 0) return;
  plan.verdict_known = true;
  const double usable = plan.input.device_memory_bytes * kUsableDeviceMemory;
  plan.margin_bytes = static_cast<int64_t>(usable) - (plan.input.on_gpu ? plan.device.total() : plan.host.total());
  plan.fits = plan.margin_bytes >= 0;
}

Plan Variant(const Plan& base, const PlanInput& input) {
  Plan p;
  p.input = input;
  p.trainable_parameters = base.trainable_parameters;
  Evaluate(p);
  return p;
}

}  // namespace

int64_t PeftTrainableParameters(const ModelConfig& c, const MethodSpec& m) {
  const int64_t L = c.num_layers(), h = c.hidden_size(), kv = c.num_key_value_heads() * c.head_dim();
  // Unset target lists are the family's defaults, as PeftMethod fills them in.
  const auto& lora_targets = m.lora.target_modules.empty() ? c.DefaultLoraTargets() : m.lora.target_modules;
  const auto& ia3_targets = m.ia3.target_modules.empty() ? c.DefaultIa3Targets() : m.ia3.target_modules;
  const auto& ia3_feedforward = m.ia3.feedforward_given ? m.ia3.feedforward_modules : c.DefaultIa3Feedforward();
  int64_t n = 0;
  switch (m.type) {
    case MethodType::kFull:
      return c.num_parameters();
    case MethodType::kLora:
    case MethodType::kDora:
      for (const LinearModule& linear : c.LayerLinears()) {
        if (!Targets(c, lora_targets, m.lora.target_is_pattern, linear)) continue;
        n += L * (m.lora.r * (linear.in + linear.out) + (m.type == MethodType::kDora ? linear.out : 0));
      }
      break;
    case MethodType::kIa3:
      for (const LinearModule& linear : c.LayerLinears()) {
        if (!Targets(c, ia3_targets, false, linear)) continue;
        n += L * (Targets(c, ia3_feedforward, false, linear) ? linear.in : linear.out);
      }
      break;
    case MethodType::kAdapter: {
      const int64_t b = m.adapter.bottleneck;
      n = (m.adapter.placement == AdapterPlacement::kHoulsby ? 2 : 1) * L * (2 * h * b + b + h);
      break;
    }
    case MethodType::kPrefix: {
      const int64_t p = m.prefix.num_virtual_tokens, width = 2 * L * kv;
      const int64_t e = m.prefix.encoder_hidden_size > 0 ? m.prefix.encoder_hidden_size : kv;
      n = m.prefix.projection ? p * kv + (kv * e + e) + (e * width + width) : p * width;
      break;
    }
    case MethodType::kPrompt:
      n = m.prompt.num_virtual_tokens * h;
      break;
  }
  // modules_to_save: the base parameters in a named module.
  for (const ParameterSpec& p : ModelParameterSpecs(c)) {
    if (std::any_of(m.modules_to_save.begin(), m.modules_to_save.end(),
                    [&](const std::string& module) { return NamesModuleOf(module, p.name); }))
      n += NumelOf(p.shape);
  }
  return n;
}

Plan MakePlan(const PlanInput& input) {
  Plan plan;
  plan.input = input;
  plan.parameters = input.model.num_parameters();
  plan.trainable_parameters = PeftTrainableParameters(input.model, input.method);
  for (const auto& unit : ModelUnits(input.model)) {
    int64_t n = 0;
    for (const auto& p : unit.parameters) n += NumelOf(p.shape);
    plan.largest_unit = std::max(plan.largest_unit, n);
  }
  Evaluate(plan);
  if (!plan.verdict_known) return plan;
  // Suggestions: the least change that fits (the stage first; then activation checkpointing,
  // which costs a third more compute; then optimizer offload, which costs host bandwidth), and
  // the largest micro-batch that fits as planned.
  if (!plan.fits) {
    for (int stage = input.zero_stage; stage <= 3 && plan.suggestions.empty(); ++stage) {
      for (const auto& [offload, checkpointing] :
           std::vector<std::pair<bool, bool>>{{input.offload_optimizer, input.activation_checkpointing},
                                              {input.offload_optimizer, true},
                                              {true, input.activation_checkpointing},
                                              {true, true}}) {
        PlanInput other = input;
        other.zero_stage = stage;
        other.offload_optimizer = offload && input.on_gpu;
        other.activation_checkpointing = checkpointing;
        const Plan p = Variant(plan, other);
        if (!p.fits) continue;
        plan.suggestions.push_back(
            fmt::format("sharding.zero_stage: {}{}{} fits ({:.1f} GiB per rank)", stage,
                        other.activation_checkpointing && !input.activation_checkpointing
                            ? " with training.activation_checkpointing: true"
                            : "",
                        other.offload_optimizer && !input.offload_optimizer ? " with offload_optimizer: cpu" : "",
                        static_cast<double>(input.on_gpu ? p.device.total() : p.host.total()) / (1 << 30)));
        break;
      }
    }
    // A parameter-efficient job that does not fit as it is may fit with its base in 4 bits.
    const bool qlora_may_help =
        input.method.type != MethodType::kFull && input.quantization.type == QuantizationType::kNone;
    for (bool checkpointing : {input.activation_checkpointing, true}) {
      if (!qlora_may_help) break;
      PlanInput other = input;
      other.quantization = QuantizationSpec{QuantizationType::kNf4, 64, true};
      other.activation_checkpointing = checkpointing;
      const Plan p = Variant(plan, other);
      if (!p.fits) continue;
      plan.suggestions.push_back(fmt::format(
          "model.quantization: {{type: nf4}} (QLoRA: the frozen base in 4 bits){} fits ({:.1f} GiB per rank)",
          checkpointing && !input.activation_checkpointing ? " with training.activation_checkpointing: true" : "",
          static_cast<double>(input.on_gpu ? p.device.total() : p.host.total()) / (1 << 30)));
      break;
    }
    if (plan.suggestions.empty()) {
      plan.suggestions.push_back(
          "nothing fits on this many devices: add ranks, shorten sequences, or use a "
          "parameter-efficient method");
    }
  }
  int64_t best = 0;
  for (int64_t micro = 1; micro <= 4096; micro *= 2) {
    PlanInput other = input;
    other.micro_batch = micro;
    if (!Variant(plan, other).fits) break;
    best = micro;
  }
  if (best > 0) plan.suggestions.push_back(fmt::format("largest micro_batch_size that fits: {}", best));
  return plan;
}

PlanInput PlanInputForJob(const JobSpec& spec, int64_t ranks, double device_memory_bytes, bool on_gpu) {
  PlanInput in;
  in.model = ModelConfig::Load(spec.model.path);
  if (spec.model.task != ModelTask::kCausalLm) {
    // The classes come from the data at training time; the head's size hardly matters to memory.
    std::vector<std::string> labels = spec.model.labels;
    if (labels.empty()) labels = in.model.label_names();
    if (labels.size() < 2) labels = {"0", "1"};
    in.model.SetHead(spec.model.task, labels);
  }
  in.ranks = ranks;
  in.ranks_per_node = spec.resources.ranks_per_node;
  in.device_memory_bytes = device_memory_bytes;
  in.on_gpu = on_gpu;
  in.zero_stage = spec.sharding.zero_stage;
  in.offload_optimizer = spec.sharding.offload_optimizer == OffloadTarget::kCpu;
  in.shard_group_size = spec.sharding.shard_group_size;
  in.method = spec.method;
  in.quantization = QuantizationOfJob(spec);
  in.dtype = spec.model.dtype;
  in.micro_batch = spec.training.micro_batch_size;
  in.seq_len = spec.data.max_seq_len;
  in.activation_checkpointing = spec.training.activation_checkpointing;
  in.prefetch_layers = spec.sharding.prefetch_layers;
  in.persistence_threshold = spec.sharding.persistence_threshold;
  return in;
}

std::string PlanToJson(const Plan& plan) {
  auto kinds = [](const MemoryByKind& m) {
    return json{{"parameters", m.parameters}, {"gradients", m.gradients},     {"optimizer", m.optimizer},
                {"buffers", m.buffers},       {"activations", m.activations}, {"total", m.total()}};
  };
  const PlanInput& in = plan.input;
  json out = {{"parameters", plan.parameters},
              {"trainable_parameters", plan.trainable_parameters},
              {"largest_unit_parameters", plan.largest_unit},
              {"ranks", in.ranks},
              {"zero_stage", in.zero_stage},
              {"offload_optimizer", in.offload_optimizer},
              {"method", ToString(in.method.type)},
              {"quantization", QuantizationName(in.quantization)},
              {"dtype", ToString(in.dtype)},
              {"micro_batch_size", in.micro_batch},
              {"seq_len", in.seq_len},
              {"per_rank",
               {{in.on_gpu ? "gpu" : "cpu", kinds(in.on_gpu ? plan.device : plan.host)}, {"host", kinds(plan.host)}}},
              {"suggestions", plan.suggestions}};
  if (plan.verdict_known) {
    out["fits"] = plan.fits;
    out["device_memory_bytes"] = in.device_memory_bytes;
    out["margin_bytes"] = plan.margin_bytes;
  }
  return out.dump(2);
}

std::string PlanToText(const Plan& plan) {
  const PlanInput& in = plan.input;
  auto gib = [](int64_t bytes) { return static_cast<double>(bytes) / (1 << 30); };
  std::string text = fmt::format(
      "model: {} parameters ({} trainable, method {}{}), {} layers, hidden {}; {} ranks, ZeRO stage {}{}, {}, "
      "micro-batch {} x {} tokens{}\n",
      plan.parameters, plan.trainable_parameters, ToString(in.method.type),
      in.quantization.type == QuantizationType::kNone
          ? ""
          : fmt::format(", base in 4 bits ({})", QuantizationName(in.quantization)),
      in.model.num_layers(), in.model.hidden_size(), in.ranks, in.zero_stage,
      in.offload_optimizer ? " + optimizer offload" : "", ToString(in.dtype), in.micro_batch, in.seq_len,
      in.activation_checkpointing ? ", activation checkpointing" : "");
  const MemoryByKind& d = in.on_gpu ? plan.device : plan.host;
  text += fmt::format(
      "per rank ({}): parameters {:.2f} GiB, gradients {:.2f} GiB, optimizer state {:.2f} GiB, buffers {:.2f} GiB, "
      "activations {:.2f} GiB (estimate): {:.2f} GiB\n",
      in.on_gpu ? "device" : "host", gib(d.parameters), gib(d.gradients), gib(d.optimizer), gib(d.buffers),
      gib(d.activations), gib(d.total()));
  if (in.on_gpu && plan.host.total() > 0) text += fmt::format("per rank (host): {:.2f} GiB\n", gib(plan.host.total()));
  if (plan.verdict_known) {
    text += plan.fits
                ? fmt::format("fits: {:.2f} GiB to spare of {:.0f}% of {:.1f} GiB\n", gib(plan.margin_bytes),
                              100 * kUsableDeviceMemory, in.device_memory_bytes / (1 << 30))
                : fmt::format("does not fit: {:.2f} GiB short of {:.0f}% of {:.1f} GiB\n", gib(-plan.margin_bytes),
                              100 * kUsableDeviceMemory, in.device_memory_bytes / (1 << 30));
  }
  for (const auto& s : plan.suggestions) text += "suggestion: " + s + "\n";
  return text;
}

}  // namespace shardtune
