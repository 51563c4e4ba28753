#include "worker/peft/peft.h"

#include <fmt/ranges.h>

#include <cmath>
#include <map>
#include <random>
#include <regex>
#include <set>

#include "common/error.h"
#include "sharding/model_layout.h"

namespace shardtune {

namespace {

constexpr const char* kPromptEmbeddings = "prompt_embeddings";
constexpr const char* kPrefixEncoder = "prefix_encoder.";

std::string AdapterUnit(int64_t layer) { return fmt::format("layer {} adapter", layer); }

bool EndsWithModule(const std::string& path, const std::string& name) {
  return path == name ||
         (path.size() > name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0 &&
          path[path.size() - name.size() - 1] == '.');
}

// Seeded draws of our own (not LibTorch's generator), so that initial adapters are the same
// on every LibTorch version, rank and world size.
uint64_t Fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ULL;
  return h;
}

at::Tensor Random(const std::vector<int64_t>& shape, uint64_t seed, const std::string& name, bool normal, double a) {
  std::mt19937_64 rng(seed ^ Fnv1a(name));
  auto uniform = [&rng] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  at::Tensor t = at::empty(shape, at::kFloat);
  float* data = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    data[i] = static_cast<float>(normal ? a * std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * M_PI * uniform())
                                        : a * (2.0 * uniform() - 1.0));
  }
  return t;
}

[[noreturn]] void MethodError(const std::string& field, const std::string& message) {
  Fail(ErrorCode::kInvalidArgument, "method.{}: {}", field, message);
}

}  // namespace

PeftMethod::PeftMethod(ModelConfig config, MethodSpec method)
    : config_(std::move(config)), linears_(config_.LayerLinears()), method_(std::move(method)) {
  if (method_.lora.target_modules.empty()) method_.lora.target_modules = config_.DefaultLoraTargets();
  if (method_.ia3.target_modules.empty()) method_.ia3.target_modules = config_.DefaultIa3Targets();
  if (const Builder build = BuilderOf(method_.type)) (this->*build)();
  AddModulesToSave();
}

// One row per method.type: a new method is a builder and a row here (kFull adds nothing).
PeftMethod::Builder PeftMethod::BuilderOf(MethodType type) {
  static const std::map<MethodType, Builder> kBuilders = {
      {MethodType::kFull, nullptr},
      {MethodType::kLora, &PeftMethod::BuildLora},
      {MethodType::kDora, &PeftMethod::BuildLora},
      {MethodType::kIa3, &PeftMethod::BuildIa3},
      {MethodType::kAdapter, &PeftMethod::BuildAdapter},
      {MethodType::kPrefix, &PeftMethod::BuildPrefix},
      {MethodType::kPrompt, &PeftMethod::BuildPrompt},
  };
  const auto it = kBuilders.find(type);
  ST_CHECK(it != kBuilders.end(), "method {} has no builder", ToString(type));
  return it->second;
}

void PeftMethod::RequireTargets(const std::string& field) const {
  if (targets_.empty())
    MethodError(field, fmt::format("is empty; name at least one linear layer (e.g. {})", linears_[0].path));
}

// LoRA and DoRA: A and B (and DoRA's magnitudes) for every target of every layer.
void PeftMethod::BuildLora() {
  const LoraSpec& lora = method_.lora;
  if (!lora.target_is_pattern) {
    targets_ = TargetsNamed(lora.target_modules, "lora.target_modules");
    RequireTargets("lora.target_modules");
  } else if (lora.target_modules[0] == "all-linear") {
    for (size_t k = 0; k < linears_.size(); ++k) targets_.push_back(k);
  } else {
    targets_ = TargetsMatching(lora.target_modules[0], "lora.target_modules");
  }
  for (int64_t i = 0; i < config_.num_layers(); ++i) {
    for (size_t t : targets_) {
      const auto [path, in, out] = linears_[t];
      const std::string p = ModulePath(i, t);
      AddParameter(p + ".lora_A.weight", {lora.r, in}, AdapterUnit(i));
      AddParameter(p + ".lora_B.weight", {out, lora.r}, AdapterUnit(i));
      if (method_.type == MethodType::kDora) AddParameter(p + ".lora_magnitude_vector", {out}, AdapterUnit(i));
    }
  }
}

std::vector<size_t> PeftMethod::TargetsMatching(const std::string& regex, const std::string& field) const {
  const int64_t layers = config_.num_layers();
  const std::regex pattern(regex);
  std::vector<size_t> targets;
  for (size_t k = 0; k < linears_.size(); ++k) {
    // A pattern that picks some layers' modules would need per-layer targets: all or none.
    int matched = 0;
    for (int64_t i = 0; i < layers; ++i) matched += std::regex_match(ModulePath(i, k), pattern);
    if (matched == layers) targets.push_back(k);
    if (matched > 0 && matched < layers) {
      MethodError(field, fmt::format("'{}' matches {} of {} layers' {}; patterns must pick a module in every layer",
                                     regex, matched, layers, linears_[k].path));
    }
  }
  if (targets.empty()) {
    MethodError(field, fmt::format("'{}' matches no module path (such as '{}')", regex, ModulePath(0, 0)));
  }
  return targets;
}

// IA3: a scale per target (on the input of feed-forward modules, on the output of the others).
void PeftMethod::BuildIa3() {
  targets_ = TargetsNamed(method_.ia3.target_modules, "ia3.target_modules");
  RequireTargets("ia3.target_modules");
  if (!method_.ia3.feedforward_given) {
    // As PEFT ends up: the family's feed-forward modules, those among the targets.
    for (const std::string& name : config_.DefaultIa3Feedforward()) {
      const std::vector<size_t> named = TargetsNamed({name}, "ia3.feedforward_modules");
      if (std::all_of(named.begin(), named.end(),
                      [&](size_t k) { return std::find(targets_.begin(), targets_.end(), k) != targets_.end(); }))
        method_.ia3.feedforward_modules.push_back(name);
    }
    method_.ia3.feedforward_given = true;  // the spec records what applied
  }
  feedforward_ = TargetsNamed(method_.ia3.feedforward_modules, "ia3.feedforward_modules");
  for (size_t f : feedforward_) {
    if (std::find(targets_.begin(), targets_.end(), f) == targets_.end()) {
      MethodError("ia3.feedforward_modules",
                  fmt::format("'{}' is not among ia3.target_modules (feed-forward modules must be targets too)",
                              linears_[f].path));
    }
  }
  for (int64_t i = 0; i < config_.num_layers(); ++i) {
    for (size_t t : targets_) {
      const auto [path, in, out] = linears_[t];
      AddParameter(ModulePath(i, t) + ".ia3_l",
                   Feedforward(t) ? std::vector<int64_t>{1, in} : std::vector<int64_t>{out, 1}, AdapterUnit(i));
    }
  }
}

// Bottleneck adapters: after the MLP in every layer (Pfeiffer), and after attention too (Houlsby).
void PeftMethod::BuildAdapter() {
  const int64_t b = method_.adapter.bottleneck, h = config_.hidden_size();
  for (int64_t i = 0; i < config_.num_layers(); ++i) {
    for (const char* where : {"attention_adapter", "mlp_adapter"}) {
      if (std::string(where) == "attention_adapter" && method_.adapter.placement == AdapterPlacement::kPfeiffer)
        continue;
      const std::string p = config_.LayerPrefix(i) + where;
      AddParameter(p + ".down_proj.weight", {b, h}, AdapterUnit(i));
      AddParameter(p + ".down_proj.bias", {b}, AdapterUnit(i));
      AddParameter(p + ".up_proj.weight", {h, b}, AdapterUnit(i));
      AddParameter(p + ".up_proj.bias", {h}, AdapterUnit(i));
    }
  }
}

// Prefix tuning, as PEFT lays it out: for every virtual token, layer 0's key and value, layer
// 1's, ... each of the key/value width (kv heads x head dim: grouped-query attention's).
void PeftMethod::BuildPrefix() {
  const int64_t kv = config_.num_key_value_heads() * config_.head_dim();
  const int64_t p = method_.prefix.num_virtual_tokens, width = config_.num_layers() * 2 * kv;
  if (!method_.prefix.projection) {
    AddParameter(kPromptEmbeddings, {p, width}, "prefix");
    return;
  }
  const int64_t hidden = method_.prefix.encoder_hidden_size > 0 ? method_.prefix.encoder_hidden_size : kv;
  AddParameter(std::string(kPrefixEncoder) + "embedding.weight", {p, kv}, "prefix");
  AddParameter(std::string(kPrefixEncoder) + "transform.0.weight", {hidden, kv}, "prefix");
  AddParameter(std::string(kPrefixEncoder) + "transform.0.bias", {hidden}, "prefix");
  AddParameter(std::string(kPrefixEncoder) + "transform.2.weight", {width, hidden}, "prefix");
  AddParameter(std::string(kPrefixEncoder) + "transform.2.bias", {width}, "prefix");
}

void PeftMethod::BuildPrompt() {
  AddParameter(kPromptEmbeddings, {method_.prompt.num_virtual_tokens, config_.hidden_size()}, "prompt");
}

// modules_to_save: base modules (and everything in them) trained in full, matched by the end
// of their path.
void PeftMethod::AddModulesToSave() {
  const ModelConfig& c = config_;
  const std::vector<ParameterSpec> base = ModelParameterSpecs(c);
  for (const std::string& module : method_.modules_to_save) {
    bool matched = false;
    for (const ParameterSpec& p : base) {
      const std::string path = p.name.substr(0, p.name.rfind('.'));
      if (!NamesModuleOf(module, p.name)) continue;
      matched = true;
      if (std::none_of(saved_.begin(), saved_.end(), [&](const ParameterSpec& s) { return s.name == p.name; }))
        saved_.push_back(p);
      for (int64_t i = 0; i < c.num_layers(); ++i) {
        for (size_t t : targets_) {
          // Adapted and trained in full at once: a merged export could not hold both.
          if (path == ModulePath(i, t)) {
            MethodError("modules_to_save",
                        fmt::format("'{}' is also a target of the method; a module is adapted or trained in full, "
                                    "not both",
                                    module));
          }
        }
      }
    }
    if (!matched) {
      const bool tied = c.family == ModelFamily::kLlama && c.llama.tie_word_embeddings;
      MethodError("modules_to_save",
                  module == "lm_head" && tied
                      ? std::string("'lm_head' is tied to the input embeddings in this model; save 'embed_tokens'")
                      : fmt::format("'{}' names no module of this model (e.g. {})", module,
                                    c.family == ModelFamily::kBert ? "word_embeddings, pooler, classifier"
                                                                   : "embed_tokens, lm_head, norm"));
    }
  }
}

void PeftMethod::AddParameter(std::string name, std::vector<int64_t> shape, std::string unit) {
  // No decay on biases, nor on IA3's scales (decay pulls towards 0, not to their identity 1).
  const bool decay =
      shape.size() >= 2 && name.find("bias") == std::string::npos && name.find("ia3_l") == std::string::npos;
  parameters_.push_back(ParameterSpec{std::move(name), std::move(shape), decay});
  parameter_units_.push_back(std::move(unit));
}

std::string PeftMethod::ModulePath(int64_t layer, size_t linear) const {
  return config_.LayerPrefix(layer) + linears_[linear].path;
}

std::vector<size_t> PeftMethod::TargetsNamed(const std::vector<std::string>& names, const std::string& field) const {
  // Every entry must match some linear layer (as PEFT insists), and in every layer (the adapters
  // are laid out per layer alike).
  const int64_t layers = config_.num_layers();
  std::set<size_t> hit;
  for (const std::string& name : names) {
    bool matched = false;
    for (size_t k = 0; k < linears_.size(); ++k) {
      int64_t in_layers = 0;
      for (int64_t i = 0; i < layers; ++i) in_layers += EndsWithModule(ModulePath(i, k), name);
      if (in_layers > 0 && in_layers < layers) {
        MethodError(field, fmt::format("'{}' names {} in {} of {} layers; targets apply to every layer alike "
                                       "(name the module, e.g. '{}')",
                                       name, linears_[k].path, in_layers, layers, linears_[k].path));
      }
      if (in_layers > 0) {
        matched = true;
        hit.insert(k);
      }
    }
    if (!matched) {
      std::vector<std::string> paths;
      for (const LinearModule& m : linears_) paths.push_back(m.path);
      MethodError(field, fmt::format("'{}' matches no linear layer of this {} model (its linear layers: {})", name,
                                     config_.model_type(), fmt::join(paths, ", ")));
    }
  }
  return {hit.begin(), hit.end()};
}

bool PeftMethod::Feedforward(size_t linear) const {
  return std::find(feedforward_.begin(), feedforward_.end(), linear) != feedforward_.end();
}

double PeftMethod::LoraScale() const {
  const LoraSpec& l = method_.lora;
  return l.use_rslora ? l.alpha / std::sqrt(static_cast<double>(l.r)) : l.alpha / static_cast<double>(l.r);
}

int64_t PeftMethod::trainable_count() const {
  if (full()) return config_.num_parameters();
  int64_t n = 0;
  for (const auto& p : parameters_) n += NumelOf(p.shape);
  for (const auto& p : saved_) n += NumelOf(p.shape);
  return n;
}

std::vector<UnitSpec> PeftMethod::Units() const {
  std::vector<UnitSpec> units = ModelUnits(config_);
  if (full()) return units;
  auto is_saved = [this](const ParameterSpec& p) {
    return std::any_of(saved_.begin(), saved_.end(), [&](const ParameterSpec& s) { return s.name == p.name; });
  };
  std::vector<UnitSpec> result;
  for (UnitSpec& unit : units) {
    unit.trainable = false;
    unit.parameters.erase(std::remove_if(unit.parameters.begin(), unit.parameters.end(), is_saved),
                          unit.parameters.end());
    if (!unit.parameters.empty()) result.push_back(std::move(unit));
  }
  // Trainable units after the frozen ones, in the order the parameters were added.
  for (size_t k = 0; k < parameters_.size(); ++k) {
    if (result.back().name != parameter_units_[k]) result.push_back(UnitSpec{parameter_units_[k], {}, true});
    result.back().parameters.push_back(parameters_[k]);
  }
  if (!saved_.empty()) result.push_back(UnitSpec{"modules_to_save", saved_, true});
  return result;
}

at::Tensor PeftMethod::Initial(const ParameterSpec& spec, uint64_t seed,
                               const std::function<at::Tensor(const std::string&)>& base) const {
  const std::string& name = spec.name;
  auto ends_with = [&name](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  const int64_t fan_in = spec.shape.size() >= 2 ? spec.shape[1] : spec.shape[0];
  // nn.Linear's default (Kaiming uniform with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const double linear_bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  if (ends_with(".lora_A.weight")) return Random(spec.shape, seed, name, false, linear_bound);
  if (ends_with(".lora_B.weight") || ends_with("up_proj.weight") || ends_with("up_proj.bias")) {
    return at::zeros(spec.shape, at::kFloat);  // the adapted model starts as the base model
  }
  if (ends_with(".lora_magnitude_vector")) {
    // |W + scale B A| with B = 0: the base weight's row norms.
    const std::string weight = name.substr(0, name.size() - std::string(".lora_magnitude_vector").size()) + ".weight";
    return base(weight).norm(2, {1});
  }
  if (ends_with(".ia3_l")) return at::ones(spec.shape, at::kFloat);
  if (ends_with("down_proj.weight") || ends_with("down_proj.bias")) {
    return Random(spec.shape, seed, name, false, 1.0 / std::sqrt(static_cast<double>(config_.hidden_size())));
  }
  if (name.rfind(kPrefixEncoder, 0) == 0 && name.find("transform") != std::string::npos) {
    // nn.Linear's default for weight and bias alike: by the layer's fan-in.
    const int64_t kv = config_.num_key_value_heads() * config_.head_dim();
    const int64_t encoder = method_.prefix.encoder_hidden_size > 0 ? method_.prefix.encoder_hidden_size : kv;
    const int64_t in = name.find("transform.0") != std::string::npos ? kv : encoder;
    return Random(spec.shape, seed, name, false, 1.0 / std::sqrt(static_cast<double>(in)));
  }
  if (name == kPromptEmbeddings && method_.type == MethodType::kPrompt) {
    // Embeddings of tokens sampled from the vocabulary: on the scale the model expects.
    const at::Tensor embeddings = base(config_.WordEmbeddings());
    std::mt19937_64 rng(seed ^ Fnv1a(name));
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < spec.shape[0]; ++i) ids.push_back(static_cast<int64_t>(rng() % config_.vocab_size()));
    return embeddings.index_select(0, at::tensor(ids, at::kLong)).clone();
  }
  // Prefix embeddings (no projection) and the prefix encoder's embedding: nn.Embedding's N(0, 1).
  return Random(spec.shape, seed, name, true, 1.0);
}

void PeftMethod::BindLayer(int64_t layer, const TensorLookup& lookup, bool training, LayerAdapters* w) const {
  const std::string prefix = config_.LayerPrefix(layer);
  switch (method_.type) {
    case MethodType::kFull:
    case MethodType::kPrompt:
      return;
    case MethodType::kLora:
    case MethodType::kDora:
      w->linear.resize(linears_.size());
      for (size_t t : targets_) {
        LinearAdapter& a = w->linear[t];
        const std::string p = ModulePath(layer, t);
        a.lora_a = lookup(p + ".lora_A.weight");
        a.lora_b = lookup(p + ".lora_B.weight");
        a.lora_scale = LoraScale();
        a.lora_dropout = training ? method_.lora.dropout : 0.0;
        if (method_.type == MethodType::kDora) a.magnitude = lookup(p + ".lora_magnitude_vector");
      }
      return;
    case MethodType::kIa3:
      w->linear.resize(linears_.size());
      for (size_t t : targets_) {
        LinearAdapter& a = w->linear[t];
        a.ia3 = lookup(ModulePath(layer, t) + ".ia3_l");
        a.ia3_on_input = Feedforward(t);
      }
      return;
    case MethodType::kAdapter: {
      auto bind = [&](const std::string& where, BottleneckAdapter* a) {
        a->down = lookup(prefix + where + ".down_proj.weight");
        a->down_bias = lookup(prefix + where + ".down_proj.bias");
        a->up = lookup(prefix + where + ".up_proj.weight");
        a->up_bias = lookup(prefix + where + ".up_proj.bias");
        a->activation = method_.adapter.activation;
      };
      if (method_.adapter.placement == AdapterPlacement::kHoulsby) bind("attention_adapter", &w->attention);
      bind("mlp_adapter", &w->mlp);
      return;
    }
    case MethodType::kPrefix: {
      const int64_t kv = config_.num_key_value_heads() * config_.head_dim();
      at::Tensor pair;  // (virtual tokens, 2 kv): this layer's keys then values
      if (!method_.prefix.projection) {
        pair = lookup(kPromptEmbeddings).narrow(1, 2 * layer * kv, 2 * kv);
      } else {
        // The reparameterization MLP, only the output rows of this layer computed.
        const std::string e = kPrefixEncoder;
        const at::Tensor hidden = at::tanh(at::linear(lookup(e + "embedding.weight"), lookup(e + "transform.0.weight"),
                                                      lookup(e + "transform.0.bias")));
        pair = at::linear(hidden, lookup(e + "transform.2.weight").narrow(0, 2 * layer * kv, 2 * kv),
                          lookup(e + "transform.2.bias").narrow(0, 2 * layer * kv, 2 * kv));
      }
      w->prefix_keys = pair.narrow(1, 0, kv);
      w->prefix_values = pair.narrow(1, kv, kv);
      return;
    }
  }
}

bool PeftMethod::UsedByLayer(const std::string& parameter, int64_t layer) const {
  if (method_.type == MethodType::kPrefix) return true;  // every layer reads its slice of the prefix
  return parameter.rfind(config_.LayerPrefix(layer), 0) == 0;
}

bool PeftMethod::mergeable() const {
  const MethodType t = method_.type;
  return t == MethodType::kFull || t == MethodType::kLora || t == MethodType::kDora || t == MethodType::kIa3;
}

at::Tensor PeftMethod::Merged(const std::string& name, const at::Tensor& base, const TensorLookup& adapter) const {
  ST_CHECK(mergeable(), "method {} cannot be merged", ToString(method_.type));
  if (full()) return base;
  for (int64_t i = 0; i < config_.num_layers(); ++i) {
    if (name.rfind(config_.LayerPrefix(i), 0) != 0) continue;
    for (size_t t : targets_) {
      const std::string module = ModulePath(i, t);
      const bool weight = name == module + ".weight", bias = name == module + ".bias";
      if (!weight && !bias) continue;
      if (method_.type == MethodType::kIa3) {
        const at::Tensor l = adapter(module + ".ia3_l").to(at::kFloat);
        if (weight) return base * l;  // (out, 1) scales rows, (1, in) scales columns
        return Feedforward(t) ? base : base * l.reshape({-1});
      }
      if (bias) return base;
      const at::Tensor delta = LoraScale() * at::matmul(adapter(module + ".lora_B.weight").to(at::kFloat),
                                                        adapter(module + ".lora_A.weight").to(at::kFloat));
      const at::Tensor merged = base + delta;
      if (method_.type == MethodType::kLora) return merged;
      const at::Tensor magnitude = adapter(module + ".lora_magnitude_vector").to(at::kFloat);
      return merged * (magnitude / merged.norm(2, {1})).unsqueeze(1);
    }
  }
  return base;
}

Batch WithVirtualTokens(const Batch& batch, int64_t tokens) {
  if (tokens == 0) return batch;
  const int64_t b = batch.input_ids.size(0);
  auto prepend = [&](const at::Tensor& t, int64_t value) {
    return at::cat({at::full({b, tokens}, value, t.options()), t}, 1);
  };
  Batch result = batch;
  result.input_ids = prepend(batch.input_ids, 0);
  result.labels = prepend(batch.labels, -100);
  result.attention_mask = prepend(batch.attention_mask, 1);
  if (batch.token_type_ids.defined()) result.token_type_ids = prepend(batch.token_type_ids, 0);
  return result;
}

}  // namespace shardtune
