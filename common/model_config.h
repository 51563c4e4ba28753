#pragma once
// The model families shardtune trains, behind one config: a Llama-family decoder (llama,
// mistral, qwen2) or a BERT encoder, as config.json's model_type says. The family's own config
// holds its shape; ModelConfig answers what the trainer, the PEFT methods, evaluation and export
// ask of any model: its task and classes, its vocabulary, its layers and their linear modules.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/bert_config.h"
#include "common/llama_config.h"

namespace shardtune {

enum class ModelFamily { kLlama, kBert };

// A linear layer of every transformer layer, as PEFT's target_modules name it: `path` below the
// layer's prefix ("self_attn.q_proj", "attention.self.query").
struct LinearModule {
  std::string path;
  int64_t in = 0, out = 0;
};

struct ModelConfig {
  ModelConfig() = default;
  // A family's config is a ModelConfig (implicitly: code written for one family passes its own).
  ModelConfig(LlamaConfig config) : llama(std::move(config)) {}  // NOLINT(google-explicit-constructor)
  ModelConfig(BertConfig config)                                 // NOLINT(google-explicit-constructor)
      : family(ModelFamily::kBert), bert(std::move(config)) {}

  ModelFamily family = ModelFamily::kLlama;
  LlamaConfig llama;  // family kLlama
  BertConfig bert;    // family kBert

  // Parses config.json text (`where` names it in errors); Load reads model_dir/config.json.
  static ModelConfig Parse(const std::string& json_text, const std::string& where);
  static ModelConfig Load(const std::filesystem::path& model_dir);

  const std::string& model_type() const;
  ModelTask task() const;
  const std::vector<std::string>& label_names() const;
  int64_t num_labels() const { return static_cast<int64_t>(label_names().size()); }
  // Makes the model a classifier over `labels` (a training job's model.task and its data's
  // classes); `classifier_dropout` overrides the config's.
  void SetHead(ModelTask task, std::vector<std::string> labels, std::optional<double> classifier_dropout = {});
  // The attention dropout in training (training.attention_dropout overrides the config's).
  void SetAttentionDropout(double p);

  int64_t vocab_size() const;
  int64_t hidden_size() const;
  int64_t num_layers() const;
  int64_t num_attention_heads() const;
  int64_t num_key_value_heads() const;
  int64_t head_dim() const;
  int64_t max_positions() const;
  // The longest sequence of real tokens to read when `requested` are asked for: a BERT has no
  // position past its table, which `virtual_tokens` (prompt or prefix tuning) share; a Llama
  // extrapolates its rotary positions, so it reads what is asked.
  int64_t SequenceLimit(int64_t requested, int64_t virtual_tokens) const;
  int64_t pad_token_id() const;
  std::vector<int64_t> eos_token_ids() const;  // none for BERT
  int64_t num_parameters() const;
  bool causal() const { return family == ModelFamily::kLlama; }

  // Names in transformers' layout: layer i's prefix ("model.layers.3."), the linear modules of
  // every layer (in the order a family's adapters index them), the input embedding's weight and
  // the classifier head's module ("score", "classifier").
  std::string LayerPrefix(int64_t layer) const;
  std::vector<LinearModule> LayerLinears() const;
  std::string WordEmbeddings() const;
  std::string ClassifierModule() const;
  // PEFT's default target modules for this family (transformers' mapping): LoRA's, IA3's and
  // IA3's feed-forward ones.
  std::vector<std::string> DefaultLoraTargets() const;
  std::vector<std::string> DefaultIa3Targets() const;
  std::vector<std::string> DefaultIa3Feedforward() const;
  // The transformers class of the model with its head ("LlamaForCausalLM",
  // "BertForSequenceClassification"), for config.json's architectures.
  std::string Architecture() const;
};

// Whether a module name as PEFT's modules_to_save and target_modules give it ("pooler",
// "output.dense") names the module holding `parameter` or one of its ancestors: the end of that
// module's path, at a dot ("pooler" names bert.pooler, and so bert.pooler.dense.weight).
bool NamesModuleOf(const std::string& module, const std::string& parameter);

}  // namespace shardtune
