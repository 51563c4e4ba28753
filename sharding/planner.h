#pragma once
// The memory planner: what one rank holds for a job, before any device is spent. Plain
// arithmetic on the model's config (no LibTorch, no allocation), so that `shardtune plan` answers
// for a 100B-parameter model on 1,024 ranks at once and the server can plan at admission.
//
// Model states (parameters, gradients, optimizer state) are ModelStateBytes (zero_stage.h), the
// function ZeroEngine reports its own memory with, unit by unit, alignment padding included.
// Buffers (gathered units, gradients in flight) follow the engine's schedule; activations are an
// estimate (docs/planner.md says what is counted).

#include <cstdint>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/model_config.h"

namespace shardtune {

struct PlanInput {
  ModelConfig model;
  int64_t ranks = 1;  // data-parallel ranks, one device each
  int64_t ranks_per_node = 8;
  double device_memory_bytes = 0;  // per rank; 0: unknown (no verdict)
  bool on_gpu = true;              // false: CPU training, everything in host memory
  int zero_stage = 0;
  bool offload_optimizer = false;  // optimizer state (and fp32 master weights) in host memory
  int64_t shard_group_size = 0;    // 0: all ranks
  MethodSpec method;
  QuantizationSpec quantization;  // QLoRA: the frozen base's linear weights in 4 bits
  ComputeDType dtype = ComputeDType::kBf16;
  int64_t micro_batch = 1;
  int64_t seq_len = 2048;
  bool activation_checkpointing = false;
  int64_t prefetch_layers = 1;
  int64_t persistence_threshold = 0;  // stage 3: units with fewer elements stay gathered
};

struct MemoryByKind {
  int64_t parameters = 0;   // compute-dtype parameters resident between steps
  int64_t gradients = 0;    // persistent fp32 gradient buffers
  int64_t optimizer = 0;    // fp32 master weights and AdamW moments
  int64_t buffers = 0;      // gathered units and gradients in flight
  int64_t activations = 0;  // the forward's saved tensors and the logits (an estimate)
  int64_t model_states() const { return parameters + gradients + optimizer; }
  int64_t total() const { return model_states() + buffers + activations; }
};

struct Plan {
  PlanInput input;
  int64_t parameters = 0;            // exact, from the config
  int64_t trainable_parameters = 0;  // all of them, or a PEFT method's
  int64_t largest_unit = 0;          // parameters of the largest unit (a decoder layer, or the embedding)
  MemoryByKind device, host;         // per rank
  bool verdict_known = false;        // device memory was given
  bool fits = false;
  int64_t margin_bytes = 0;  // usable device memory left (negative: short by)
  std::vector<std::string> suggestions;
};

// The fraction of device memory a plan may fill: the rest is the CUDA context, the allocator's
// fragmentation and communication library buffers.
inline constexpr double kUsableDeviceMemory = 0.92;

Plan MakePlan(const PlanInput& input);

// Trainable parameters of a parameter-efficient method on this model (docs/peft.md's formulas).
int64_t PeftTrainableParameters(const ModelConfig& model, const MethodSpec& method);

// A job spec's plan on `ranks` ranks (the model's config read from model.path).
PlanInput PlanInputForJob(const JobSpec& spec, int64_t ranks, double device_memory_bytes, bool on_gpu);

std::string PlanToJson(const Plan& plan);
std::string PlanToText(const Plan& plan);

}  // namespace shardtune
