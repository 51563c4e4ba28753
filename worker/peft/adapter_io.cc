#include "worker/peft/adapter_io.h"

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "worker/models/hf_io.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kModelPrefix = "base_model.model.";
constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

std::string PeftType(MethodType type) {
  switch (type) {
    case MethodType::kLora:
    case MethodType::kDora:
      return "LORA";
    case MethodType::kIa3:
      return "IA3";
    case MethodType::kPrefix:
      return "PREFIX_TUNING";
    case MethodType::kPrompt:
      return "PROMPT_TUNING";
    case MethodType::kAdapter:
      return "BOTTLENECK";
    case MethodType::kFull:
      break;
  }
  Fail(ErrorCode::kInvalidArgument, "method.type 'full' has no adapter to write");
}

// PEFT's key of one of our parameter names; prompt-learning methods keep one bare tensor.
std::string PeftKey(const std::string& name) { return name == "prompt_embeddings" ? name : kModelPrefix + name; }

json AdapterConfig(const PeftMethod& peft, const std::string& base_model) {
  const MethodSpec& m = peft.spec();
  const ModelConfig& c = peft.config();
  const char* task = c.task() == ModelTask::kSequenceClassification ? "SEQ_CLS"
                     : c.task() == ModelTask::kTokenClassification  ? "TOKEN_CLS"
                                                                    : "CAUSAL_LM";
  json config = {{"peft_type", PeftType(m.type)}, {"task_type", task},   {"base_model_name_or_path", base_model},
                 {"inference_mode", true},        {"revision", nullptr}, {"auto_mapping", nullptr}};
  config["modules_to_save"] = m.modules_to_save.empty() ? json(nullptr) : json(m.modules_to_save);
  switch (m.type) {
    case MethodType::kLora:
    case MethodType::kDora: {
      config.update({{"r", m.lora.r},
                     {"lora_alpha", m.lora.alpha},
                     {"lora_dropout", m.lora.dropout},
                     {"use_rslora", m.lora.use_rslora},
                     {"use_dora", m.type == MethodType::kDora},
                     {"bias", "none"},
                     {"fan_in_fan_out", false},
                     {"init_lora_weights", true},
                     {"layers_to_transform", nullptr},
                     {"layers_pattern", nullptr},
                     {"rank_pattern", json::object()},
                     {"alpha_pattern", json::object()}});
      config["target_modules"] =
          m.lora.target_is_pattern ? json(m.lora.target_modules[0]) : json(m.lora.target_modules);
      break;
    }
    case MethodType::kIa3:
      config.update({{"target_modules", m.ia3.target_modules},
                     {"feedforward_modules", m.ia3.feedforward_modules},
                     {"fan_in_fan_out", false},
                     {"init_ia3_weights", true}});
      break;
    case MethodType::kPrefix:
    case MethodType::kPrompt: {
      const bool prefix = m.type == MethodType::kPrefix;
      const int64_t kv = c.num_key_value_heads() * c.head_dim();
      config.update({{"num_virtual_tokens", prefix ? m.prefix.num_virtual_tokens : m.prompt.num_virtual_tokens},
                     {"token_dim", prefix ? kv : c.hidden_size()},
                     {"num_transformer_submodules", 1},
                     {"num_attention_heads", prefix ? c.num_key_value_heads() : c.num_attention_heads()},
                     {"num_layers", c.num_layers()}});
      if (prefix) {
        // The file holds the projected prefix: loadable as an embedding, whether or not an MLP made it.
        config["prefix_projection"] = false;
        config["encoder_hidden_size"] = m.prefix.encoder_hidden_size > 0 ? m.prefix.encoder_hidden_size : kv;
      } else {
        config["prompt_tuning_init"] = "RANDOM";
      }
      break;
    }
    case MethodType::kAdapter:
      config.update({{"bottleneck_size", m.adapter.bottleneck},
                     {"placement", ToString(m.adapter.placement)},
                     {"non_linearity", ToString(m.adapter.activation)}});
      break;
    case MethodType::kFull:
      break;
  }
  return config;
}

[[noreturn]] void ConfigError(const fs::path& file, const std::string& message) {
  Fail(ErrorCode::kInvalidArgument, "{}: {}", file.string(), message);
}

template <typename T>
T Field(const json& config, const fs::path& file, const char* key, const T& fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  try {
    return config[key].get<T>();
  } catch (const json::exception&) {
    ConfigError(file, fmt::format("field '{}' has the wrong type: {}", key, config[key].dump()));
  }
}

std::vector<std::string> Strings(const json& config, const fs::path& file, const char* key, bool* single) {
  if (!config.contains(key) || config[key].is_null()) return {};
  if (config[key].is_string() && single != nullptr) {
    *single = true;
    return {config[key].get<std::string>()};
  }
  return Field<std::vector<std::string>>(config, file, key, {});
}

MethodSpec MethodFromConfig(const json& config, const fs::path& file) {
  MethodSpec m;
  const std::string type = Field<std::string>(config, file, "peft_type", "");
  if (type == "LORA") {
    m.type = Field<bool>(config, file, "use_dora", false) ? MethodType::kDora : MethodType::kLora;
    m.lora.r = Field<int64_t>(config, file, "r", m.lora.r);
    m.lora.alpha = Field<double>(config, file, "lora_alpha", m.lora.alpha);
    m.lora.dropout = Field<double>(config, file, "lora_dropout", 0.0);
    m.lora.use_rslora = Field<bool>(config, file, "use_rslora", false);
    m.lora.target_modules = Strings(config, file, "target_modules", &m.lora.target_is_pattern);
    if (Field<std::string>(config, file, "bias", "none") != "none") {
      ConfigError(file, "LoRA bias training ('bias' other than \"none\") is not supported");
    }
    // Fields that change the model in ways shardtune does not implement: refused by name rather
    // than loaded into something else.
    for (const char* key : {"rank_pattern", "alpha_pattern"}) {
      if (config.contains(key) && !config[key].is_null() && !config[key].empty())
        ConfigError(file, fmt::format("per-module settings ('{}') are not supported", key));
    }
    for (const char* key : {"layers_to_transform", "exclude_modules"}) {
      if (config.contains(key) && !config[key].is_null() && !(config[key].is_array() && config[key].empty()))
        ConfigError(file, fmt::format("'{}' is not supported: shardtune adapts a module in every layer", key));
    }
    if (config.contains("init_lora_weights") && config["init_lora_weights"].is_string()) {
      const std::string init = config["init_lora_weights"].get<std::string>();
      if (init != "gaussian" && init != "eva") {  // the others (pissa, olora, corda, loftq) rewrite the base weights
        ConfigError(file, fmt::format("init_lora_weights '{}' changes the base model's weights, which this "
                                      "adapter does not carry",
                                      init));
      }
    }
    if (m.lora.r < 1) ConfigError(file, fmt::format("r must be >= 1, got {}", m.lora.r));
  } else if (type == "IA3") {
    m.type = MethodType::kIa3;
    m.ia3.target_modules = Strings(config, file, "target_modules", nullptr);
    m.ia3.feedforward_modules = Strings(config, file, "feedforward_modules", nullptr);
    m.ia3.feedforward_given = config.contains("feedforward_modules") && !config["feedforward_modules"].is_null();
  } else if (type == "PREFIX_TUNING") {
    m.type = MethodType::kPrefix;
    m.prefix.num_virtual_tokens = Field<int64_t>(config, file, "num_virtual_tokens", 0);
    m.prefix.projection = false;  // the file holds the projected prefix
  } else if (type == "PROMPT_TUNING") {
    m.type = MethodType::kPrompt;
    m.prompt.num_virtual_tokens = Field<int64_t>(config, file, "num_virtual_tokens", 0);
  } else if (type == "BOTTLENECK") {
    m.type = MethodType::kAdapter;
    m.adapter.bottleneck = Field<int64_t>(config, file, "bottleneck_size", 0);
    const std::string placement = Field<std::string>(config, file, "placement", "pfeiffer");
    const std::string activation = Field<std::string>(config, file, "non_linearity", "relu");
    m.adapter.placement = placement == "houlsby" ? AdapterPlacement::kHoulsby : AdapterPlacement::kPfeiffer;
    m.adapter.activation = activation == "gelu"   ? AdapterActivation::kGelu
                           : activation == "silu" ? AdapterActivation::kSilu
                                                  : AdapterActivation::kRelu;
    if (placement != "houlsby" && placement != "pfeiffer") ConfigError(file, "placement must be houlsby or pfeiffer");
    if (activation != "relu" && activation != "gelu" && activation != "silu")
      ConfigError(file, "non_linearity must be relu, gelu or silu");
  } else {
    ConfigError(file, fmt::format("peft_type '{}' is not one shardtune reads (LORA, IA3, PREFIX_TUNING, "
                                  "PROMPT_TUNING, BOTTLENECK)",
                                  type));
  }
  if ((m.type == MethodType::kPrefix && m.prefix.num_virtual_tokens < 1) ||
      (m.type == MethodType::kPrompt && m.prompt.num_virtual_tokens < 1)) {
    ConfigError(file, "num_virtual_tokens must be >= 1");
  }
  if (m.type == MethodType::kAdapter && m.adapter.bottleneck < 1) ConfigError(file, "bottleneck_size must be >= 1");
  m.modules_to_save = Strings(config, file, "modules_to_save", nullptr);
  return m;
}

}  // namespace

namespace {

// The model card PEFT's save_pretrained writes beside an adapter, with the training procedure's
// bitsandbytes config (PEFT listed it so for QLoRA adapters) when the base was 4-bit.
std::string ModelCard(const PeftMethod& peft, const std::string& base_model, ComputeDType dtype,
                      const std::optional<Quant4Format>& quantization) {
  std::string card = fmt::format(
      "---\nbase_model: {}\nlibrary_name: peft\n---\n\n# {} adapter\n\nA {} adapter for `{}`, written by "
      "shardtune in PEFT's layout (adapter_config.json, adapter_model.safetensors).\n",
      base_model, PeftType(peft.spec().type), PeftType(peft.spec().type), base_model);
  if (quantization) {
    card += fmt::format(
        "\n## Training procedure\n\nThe following `bitsandbytes` quantization config was used during training:\n"
        "- quant_method: bitsandbytes\n- load_in_8bit: False\n- load_in_4bit: True\n"
        "- bnb_4bit_quant_type: {}\n- bnb_4bit_use_double_quant: {}\n- bnb_4bit_compute_dtype: {}\n"
        "- blocksize: {}\n",
        Quant4TypeName(quantization->type), quantization->double_quant ? "True" : "False", TorchDTypeName(dtype),
        quantization->block_size);
  }
  return card;
}

}  // namespace

void WritePeftAdapter(const fs::path& dir, const PeftMethod& peft, const std::string& base_model,
                      const std::map<std::string, at::Tensor>& tensors, ComputeDType dtype,
                      const std::optional<Quant4Format>& quantization) {
  // Every tensor present and non-empty before anything is written.
  std::vector<ParameterSpec> expected = peft.parameters();
  for (const auto& p : peft.saved_parameters()) expected.push_back(p);
  for (const auto& p : expected) {
    const auto it = tensors.find(p.name);
    if (it == tensors.end() || !it->second.defined() || it->second.numel() == 0 ||
        it->second.numel() != NumelOf(p.shape)) {
      Fail(ErrorCode::kInternal, "refusing to write an adapter without tensor '{}' (shape {}): it is {}", p.name,
           fmt::join(p.shape, "x"), it == tensors.end() ? "missing" : "empty or of another size");
    }
  }
  std::map<std::string, at::Tensor> out;  // PEFT keys, in the saved dtype
  const at::ScalarType type = ToScalarType(dtype);
  const MethodSpec& m = peft.spec();
  for (const auto& p : expected) {
    if (m.type == MethodType::kPrefix && m.prefix.projection) break;  // written below, projected
    out[PeftKey(p.name)] = tensors.at(p.name).reshape(p.shape).to(type).contiguous();
  }
  if (m.type == MethodType::kPrefix && m.prefix.projection) {
    // PEFT saves what the reparameterization produces, not the MLP (it is a training device).
    auto t = [&](const std::string& name) { return tensors.at("prefix_encoder." + name); };
    const at::Tensor hidden =
        at::tanh(at::linear(t("embedding.weight"), t("transform.0.weight"), t("transform.0.bias")));
    out["prompt_embeddings"] = at::linear(hidden, t("transform.2.weight"), t("transform.2.bias")).to(type).contiguous();
    for (const auto& p : peft.saved_parameters()) out[PeftKey(p.name)] = tensors.at(p.name).to(type).contiguous();
  }
  std::vector<TensorBytes> bytes;
  for (const auto& [key, tensor] : out) {
    bytes.push_back(TensorBytes{key, SafetensorsDTypeOf(type), tensor.sizes().vec(), tensor.data_ptr(),
                                static_cast<size_t>(tensor.nbytes())});
  }
  WriteSafetensors(dir / kWeightsFile, bytes);
  WriteFileAtomic(dir / kConfigFile, AdapterConfig(peft, base_model).dump(2) + "\n");
  WriteFileAtomic(dir / "README.md", ModelCard(peft, base_model, dtype, quantization));
}

LoadedAdapter ReadPeftAdapter(const fs::path& dir, const ModelConfig& config) {
  const fs::path config_path = dir / kConfigFile;
  if (!fs::exists(config_path)) {
    Fail(ErrorCode::kNotFound, "{}: no {} (expected a PEFT adapter directory)", dir.string(), kConfigFile);
  }
  json adapter_config;
  try {
    adapter_config = json::parse(ReadFile(config_path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    ConfigError(config_path, fmt::format("not valid JSON: {}", e.what()));
  }
  if (!adapter_config.is_object()) ConfigError(config_path, "expected a JSON object");
  LoadedAdapter loaded;
  loaded.method = MethodFromConfig(adapter_config, config_path);
  const PeftMethod peft(config, loaded.method);

  const fs::path weights = dir / kWeightsFile;
  const auto file = SafetensorsFile::Open(weights);
  std::vector<ParameterSpec> expected = peft.parameters();
  for (const auto& p : peft.saved_parameters()) expected.push_back(p);
  std::set<std::string> known;
  for (const auto& p : expected) {
    const std::string key = PeftKey(p.name);
    known.insert(key);
    const TensorInfo* info = file->Find(key);
    if (info == nullptr) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}' (shape {}) is missing; {} implies it", weights.string(), key,
           fmt::join(p.shape, "x"), kConfigFile);
    }
    if (info->shape != p.shape) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}' has shape {} but this model and {} imply {}", weights.string(), key,
           fmt::join(info->shape, "x"), kConfigFile, fmt::join(p.shape, "x"));
    }
    loaded.tensors[p.name] = ReadTensorFp32(*file, *info).clone();  // the file is unmapped on return
  }
  for (const auto& [key, info] : file->tensors()) {
    if (!known.count(key)) {
      Fail(ErrorCode::kDataLoss, "{}: unexpected tensor '{}' for a {} adapter of this model", weights.string(), key,
           PeftType(loaded.method.type));
    }
  }
  return loaded;
}

}  // namespace shardtune
