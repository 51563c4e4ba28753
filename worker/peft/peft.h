#pragma once
// Parameter-efficient fine-tuning of any supported model (Llama-family or BERT): LoRA, DoRA,
// IA3, bottleneck adapters, prefix tuning and prompt tuning (method.type in the job spec).
//
// A PeftMethod knows what the method adds to the model: its parameters (named as Hugging Face
// PEFT names them, without PEFT's "base_model.model." prefix), how ZeRO holds them (units),
// their initial values, how the model binds them, and how LoRA/DoRA/IA3 merge into the base
// weights. The base model is frozen: its units carry no gradient and no optimizer state.
// Parameter counts per method are in docs/peft.md.

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/model_config.h"
#include "sharding/parameter_layout.h"
#include "worker/data/token_dataset.h"
#include "worker/models/adapters.h"

namespace shardtune {

class PeftMethod {
 public:
  // Validates the method against the model (target modules that match nothing, modules_to_save
  // that do not exist, ...); throws Error naming the method.* field. method.type full is valid:
  // nothing is added and everything is trained. Target modules left empty are the family's
  // defaults (PEFT's: q_proj and v_proj for Llama's LoRA, query and value for BERT's).
  PeftMethod(ModelConfig config, MethodSpec method);

  // The method as applied: default target modules filled in.
  const MethodSpec& spec() const { return method_; }
  const ModelConfig& config() const { return config_; }
  bool full() const { return method_.type == MethodType::kFull; }

  // The method's own parameters, in unit order.
  const std::vector<ParameterSpec>& parameters() const { return parameters_; }
  // Base-model parameters trained in full (modules_to_save).
  const std::vector<ParameterSpec>& saved_parameters() const { return saved_; }
  int64_t trainable_count() const;

  // ZeroEngine's units: the base model's (frozen unless `full`), then the trainable ones.
  std::vector<UnitSpec> Units() const;

  // The initial value of one of parameters(): deterministic in `seed` and the name (the same on
  // every rank and any world size). `base` returns a base-model tensor (DoRA's magnitudes,
  // prompt tuning's vocabulary sample).
  at::Tensor Initial(const ParameterSpec& spec, uint64_t seed,
                     const std::function<at::Tensor(const std::string&)>& base) const;

  // Binds what the method adds to layer `layer`. `training` turns LoRA dropout on.
  void BindLayer(int64_t layer, const TensorLookup& lookup, bool training, LayerAdapters* adapters) const;
  // Names of the parameters a layer's computation uses besides the base layer's own.
  bool UsedByLayer(const std::string& parameter, int64_t layer) const;

  // Prompt tuning's virtual tokens, prefix tuning's keys per layer (0 for the other methods).
  int64_t prompt_tokens() const { return method_.type == MethodType::kPrompt ? method_.prompt.num_virtual_tokens : 0; }
  int64_t prefix_tokens() const { return method_.type == MethodType::kPrefix ? method_.prefix.num_virtual_tokens : 0; }

  // LoRA, DoRA and IA3 fold into the base weights; the others add computation.
  bool mergeable() const;
  // Base parameter `name` (fp32) with the adapter folded in; `adapter` looks up parameters().
  at::Tensor Merged(const std::string& name, const at::Tensor& base, const TensorLookup& adapter) const;

  // The linear layers of each layer the method targets (LoRA/DoRA/IA3), as indices of
  // ModelConfig::LayerLinears().
  const std::vector<size_t>& targets() const { return targets_; }

 private:
  // One builder per method.type (the table in peft.cc): sets targets_ and adds parameters_.
  using Builder = void (PeftMethod::*)();
  static Builder BuilderOf(MethodType type);
  void BuildLora();  // and DoRA
  void BuildIa3();
  void BuildAdapter();
  void BuildPrefix();
  void BuildPrompt();
  void AddModulesToSave();
  void RequireTargets(const std::string& field) const;
  // The linear layers whose path matches `regex` in every layer (LoRA's target_is_pattern).
  std::vector<size_t> TargetsMatching(const std::string& regex, const std::string& field) const;
  void AddParameter(std::string name, std::vector<int64_t> shape, std::string unit);
  std::string ModulePath(int64_t layer, size_t linear) const;
  std::vector<size_t> TargetsNamed(const std::vector<std::string>& names, const std::string& field) const;
  bool Feedforward(size_t linear) const;  // IA3 scales its input
  double LoraScale() const;

  ModelConfig config_;
  std::vector<LinearModule> linears_;
  MethodSpec method_;
  std::vector<size_t> targets_;
  std::vector<size_t> feedforward_;  // IA3
  std::vector<ParameterSpec> parameters_;
  std::vector<std::string> parameter_units_;  // the unit of each of parameters_
  std::vector<ParameterSpec> saved_;
};

// Prompt tuning: the batch with `tokens` placeholder positions in front of every row (real for
// attention, no loss), where the virtual tokens' embeddings go.
Batch WithVirtualTokens(const Batch& batch, int64_t tokens);

}  // namespace shardtune
