#include "worker/inference_model.h"

#include <ATen/core/grad_mode.h>

#include <set>

#include "sharding/model_layout.h"
#include "sharding/prequantized.h"
#include "worker/models/hf_io.h"
#include "worker/peft/adapter_io.h"
#include "worker/peft/peft.h"

namespace shardtune {

at::Tensor LoadedModel::TaskLogits(const Batch& batch) const {
  if (bert) return bert->Forward(batch.input_ids, batch.attention_mask, batch.token_type_ids);
  const at::Tensor logits = model->Forward(batch.input_ids, batch.attention_mask);
  return config.task() == ModelTask::kSequenceClassification ? PooledLogits(logits, batch.attention_mask) : logits;
}

namespace {

// Rounds the base's 4-bit weights (those QLoRA holds so) through `format`, where the checkpoint
// holds their original values.
void RoundThrough4Bit(const std::filesystem::path& model_dir, const std::vector<UnitSpec>& units,
                      const Quant4Format& format, FlatParameters& flat) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(model_dir);
  at::NoGradGuard no_grad;
  for (const std::string& name : QuantizedWeightNames(units)) {
    if (FindPrequantizedWeight(checkpoint, model_dir, name)) continue;  // its values are 4-bit ones
    at::Tensor value = flat.Value(*flat.Find(name));
    const at::Tensor original = value.contiguous();
    Dequantize4(Quantize4(original.data_ptr<float>(), original.numel(), format), value.data_ptr<float>());
  }
}

}  // namespace

LoadedModel LoadModelForInference(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                                  const ClassifierHead& head, const std::optional<Quant4Format>& quantization) {
  LoadedModel loaded;
  ModelConfig& config = loaded.config;
  config = ModelConfig::Load(model_dir);
  if (head.task != ModelTask::kCausalLm) config.SetHead(head.task, head.labels);
  std::optional<LoadedAdapter> adapter;
  std::optional<PeftMethod> peft;
  std::set<std::string> from_adapter;  // modules_to_save (a new head among them) come with the adapter
  if (!adapter_dir.empty()) {
    adapter = ReadPeftAdapter(adapter_dir, config);
    peft.emplace(config, adapter->method);
    for (const auto& p : peft->saved_parameters()) from_adapter.insert(p.name);
  }
  loaded.weights = std::make_unique<FlatParameters>(ModelParameterSpecs(config));
  LoadHfWeights(model_dir, *loaded.weights, from_adapter);
  if (quantization) {
    std::vector<UnitSpec> units = peft ? peft->Units() : ModelUnits(config);
    if (!peft)
      for (UnitSpec& unit : units) unit.trainable = false;
    RoundThrough4Bit(model_dir, units, *quantization, *loaded.weights);
  }
  FlatParameters* flat = loaded.weights.get();
  auto lookup_in = [](FlatParameters* parameters) -> TensorLookup {
    return [parameters](const std::string& name) { return parameters->Value(*parameters->Find(name)); };
  };
  TensorLookup adapter_lookup;
  if (adapter) {
    loaded.adapter = std::make_unique<FlatParameters>(peft->parameters());
    at::NoGradGuard no_grad;
    for (const auto& slot : loaded.adapter->slots())
      loaded.adapter->Value(slot).copy_(adapter->tensors.at(slot.spec.name));
    for (const auto& p : peft->saved_parameters())  // modules_to_save replace the base modules
      flat->Value(*flat->Find(p.name)).copy_(adapter->tensors.at(p.name));
    adapter_lookup = lookup_in(loaded.adapter.get());
    loaded.virtual_tokens = adapter->method.VirtualTokens();
  }
  const at::Tensor prompt = peft && peft->prompt_tokens() > 0 ? adapter_lookup("prompt_embeddings") : at::Tensor();
  const TensorLookup base = lookup_in(flat);
  if (config.family == ModelFamily::kBert) {
    std::vector<BertLayerWeights> layers;
    for (int64_t i = 0; i < config.num_layers(); ++i) {
      layers.push_back(BindBertLayer(i, base));
      if (peft) peft->BindLayer(i, adapter_lookup, /*training=*/false, &layers.back().adapters);
    }
    loaded.bert = std::make_unique<BertModel>(config.bert, BindBertEmbeddings(base), std::move(layers),
                                              BindBertHead(config.bert, base), prompt);
    return loaded;
  }
  LlamaWeights weights = BindLlamaWeights(config.llama, base);
  if (peft) {
    for (size_t i = 0; i < weights.layers.size(); ++i)
      peft->BindLayer(static_cast<int64_t>(i), adapter_lookup, /*training=*/false, &weights.layers[i].adapters);
    weights.prompt_embeddings = prompt;
  }
  loaded.model = std::make_unique<LlamaModel>(config.llama, std::move(weights));
  return loaded;
}

}  // namespace shardtune
