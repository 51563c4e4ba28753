#include "worker/unit_model.h"

#include <fmt/format.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "sharding/llama_layout.h"
#include "sharding/unit_function.h"
#include "worker/models/bert.h"
#include "worker/models/llama.h"

namespace shardtune {

namespace {

// The units holding the parameters a computation uses: `primary`'s unit first (it leads
// prefetch), then every other unit with a parameter `uses` accepts.
std::vector<int> UnitsUsing(const ZeroEngine& engine, const std::string& primary,
                            const std::function<bool(const std::string&)>& uses) {
  const int first = engine.UnitOf(primary);
  std::vector<int> units = {first};
  const auto& layout = engine.layout().units;
  for (size_t u = 0; u < layout.size(); ++u) {
    if (static_cast<int>(u) == first) continue;
    for (const auto& p : layout[u].parameters) {
      if (uses(p.spec.name)) {
        units.push_back(static_cast<int>(u));
        break;
      }
    }
  }
  return units;
}

bool StartsWith(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// The units of each layer: its own, and the method's parameters the layer uses.
std::vector<std::vector<int>> LayerUnits(const PeftMethod& peft, const ZeroEngine& engine, const std::string& first) {
  std::set<std::string> adapter;
  for (const auto& p : peft.parameters()) adapter.insert(p.name);
  std::vector<std::vector<int>> units;
  for (int64_t i = 0; i < peft.config().num_layers(); ++i) {
    const std::string prefix = peft.config().LayerPrefix(i);
    units.push_back(UnitsUsing(engine, prefix + first, [&](const std::string& name) {
      return StartsWith(name, prefix) || (adapter.count(name) && peft.UsedByLayer(name, i));
    }));
  }
  return units;
}

TensorLookup LookupIn(const UnitParameters& p) {
  return [&p](const std::string& name) { return p(name); };
}

// What every family's unit model holds: the method, the engine, and the units of each piece.
class FamilyUnitModel : public UnitModel {
 protected:
  FamilyUnitModel(const PeftMethod& peft, ZeroEngine& engine, at::ScalarType dtype, at::Device device)
      : peft_(peft), engine_(engine), dtype_(dtype), device_(device) {}

  const PeftMethod& peft_;
  ZeroEngine& engine_;
  at::ScalarType dtype_;
  at::Device device_;
  std::vector<int> embed_units_, prompt_units_, head_units_;
  std::vector<std::vector<int>> layer_units_;
};

class LlamaUnitModel final : public FamilyUnitModel {
 public:
  LlamaUnitModel(const PeftMethod& peft, ZeroEngine& engine, at::ScalarType dtype, at::Device device)
      : FamilyUnitModel(peft, engine, dtype, device), config_(peft.config().llama), blocks_(config_) {
    const std::string embed = "model.embed_tokens.weight";
    embed_units_ = UnitsUsing(engine, embed, [&](const std::string& name) { return name == embed; });
    if (peft.prompt_tokens() > 0) {
      prompt_units_ =
          UnitsUsing(engine, "prompt_embeddings", [](const std::string& name) { return name == "prompt_embeddings"; });
    }
    layer_units_ = LayerUnits(peft, engine, "input_layernorm.weight");
    const bool causal = config_.task == ModelTask::kCausalLm;
    head_units_ = UnitsUsing(engine, "model.norm.weight", [&](const std::string& name) {
      return name == "model.norm.weight" || (causal ? name == LmHeadName(config_) : StartsWith(name, "score."));
    });
  }

  at::Tensor Forward(const Batch& batch, bool training) override {
    // Prompt tuning: the batch starts with placeholders (WithVirtualTokens) that become the
    // virtual tokens, in a call of their own so that the frozen embedding needs no backward.
    const int64_t prompt = peft_.prompt_tokens(), seq = batch.input_ids.size(1);
    at::Tensor h = ApplyUnits(
        engine_, embed_units_, ToDevice(batch.input_ids.narrow(1, prompt, seq - prompt), device_),
        [this](const at::Tensor& ids, const UnitParameters& p) {
          return blocks_.Embed(ids, p("model.embed_tokens.weight"));
        },
        UnitUse::kRowLookup);
    if (prompt > 0) {
      h = ApplyUnits(engine_, prompt_units_, h, [](const at::Tensor& x, const UnitParameters& p) {
        return PrependPrompt(x, p("prompt_embeddings"));
      });
    }
    // Prefix tuning's keys are a past of P tokens to every layer.
    const int64_t prefix = peft_.prefix_tokens(), b = batch.input_ids.size(0);
    const at::Tensor mask =
        prefix > 0 ? at::cat({at::ones({b, prefix}, batch.attention_mask.options()), batch.attention_mask}, 1)
                   : batch.attention_mask;
    // Captured by value: with recompute, a unit's computation runs again inside backward.
    const Positions host = blocks_.PositionsFor(b, seq, prefix, mask, dtype_, batch.position_ids, batch.document_ids);
    const Positions positions{ToDevice(host.cos, device_), ToDevice(host.sin, device_), ToDevice(host.mask, device_),
                              ToDevice(host.window_mask, device_), host.causal};
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      h = ApplyUnits(engine_, layer_units_[i], h,
                     [this, i, positions, training](const at::Tensor& x, const UnitParameters& p) {
                       LlamaLayerWeights weights = BindLlamaLayer(config_, i, LookupIn(p));
                       peft_.BindLayer(i, LookupIn(p), training, &weights.adapters);
                       if (training) weights.attention_dropout = config_.attention_dropout;
                       return blocks_.Layer(weights, x, positions, /*cache=*/nullptr, static_cast<size_t>(i));
                     });
    }
    if (config_.task == ModelTask::kCausalLm) {
      return ApplyUnits(engine_, head_units_, h, [this](const at::Tensor& x, const UnitParameters& p) {
        return blocks_.Head(x, p("model.norm.weight"), p(LmHeadName(config_)));
      });
    }
    const at::Tensor logits =
        ApplyUnits(engine_, head_units_, h, [this, training](const at::Tensor& x, const UnitParameters& p) {
          const bool bias = config_.task == ModelTask::kTokenClassification;
          return blocks_.Classify(x, p("model.norm.weight"), p("score.weight"), bias ? p("score.bias") : at::Tensor(),
                                  training);
        });
    return config_.task == ModelTask::kSequenceClassification ? PooledLogits(logits, batch.attention_mask) : logits;
  }

 private:
  const LlamaConfig& config_;
  LlamaBlocks blocks_;
};

class BertUnitModel final : public FamilyUnitModel {
 public:
  BertUnitModel(const PeftMethod& peft, ZeroEngine& engine, at::ScalarType dtype, at::Device device)
      : FamilyUnitModel(peft, engine, dtype, device), config_(peft.config().bert), blocks_(config_) {
    embed_units_ = UnitsUsing(engine, "bert.embeddings.word_embeddings.weight",
                              [](const std::string& name) { return StartsWith(name, "bert.embeddings."); });
    if (peft.prompt_tokens() > 0) {
      prompt_units_ =
          UnitsUsing(engine, "prompt_embeddings", [](const std::string& name) { return name == "prompt_embeddings"; });
    }
    layer_units_ = LayerUnits(peft, engine, "attention.self.query.weight");
    head_units_ = UnitsUsing(engine, "classifier.weight", [](const std::string& name) {
      return StartsWith(name, "classifier.") || StartsWith(name, "bert.pooler.");
    });
  }

  at::Tensor Forward(const Batch& batch, bool training) override {
    const int64_t prompt = peft_.prompt_tokens(), prefix = peft_.prefix_tokens(), seq = batch.input_ids.size(1);
    const at::Tensor types = ToDevice(batch.token_type_ids, device_);
    const at::Tensor ids = ToDevice(batch.input_ids.narrow(1, prompt, seq - prompt), device_);
    auto embed = [this, types, prefix, training](const at::Tensor& words, const UnitParameters& p) {
      return blocks_.Embed(words, types, prefix, BindBertEmbeddings(LookupIn(p)), training);
    };
    at::Tensor h;
    if (prompt == 0) {
      h = ApplyUnits(engine_, embed_units_, ids, [this, embed](const at::Tensor& x, const UnitParameters& p) {
        return embed(blocks_.WordEmbeddings(x, p("bert.embeddings.word_embeddings.weight")), p);
      });
    } else {
      // Prompt tuning: the virtual tokens join the word embeddings, before the positions' and
      // the LayerNorm (as PEFT passes them, through inputs_embeds): three calls.
      at::Tensor words = ApplyUnits(engine_, embed_units_, ids, [this](const at::Tensor& x, const UnitParameters& p) {
        return blocks_.WordEmbeddings(x, p("bert.embeddings.word_embeddings.weight"));
      });
      words = ApplyUnits(engine_, prompt_units_, words, [](const at::Tensor& x, const UnitParameters& p) {
        return PrependPrompt(x, p("prompt_embeddings"));
      });
      h = ApplyUnits(engine_, embed_units_, words, embed);
    }
    const at::Tensor mask = ToDevice(blocks_.AttentionMask(batch.attention_mask, prefix, dtype_), device_);
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      h = ApplyUnits(engine_, layer_units_[i], h,
                     [this, i, mask, training](const at::Tensor& x, const UnitParameters& p) {
                       BertLayerWeights weights = BindBertLayer(i, LookupIn(p));
                       peft_.BindLayer(i, LookupIn(p), training, &weights.adapters);
                       return blocks_.Layer(weights, x, mask, training);
                     });
    }
    return ApplyUnits(engine_, head_units_, h, [this, training](const at::Tensor& x, const UnitParameters& p) {
      return blocks_.Classify(x, BindBertHead(config_, LookupIn(p)), training);
    });
  }

 private:
  const BertConfig& config_;
  BertBlocks blocks_;
};

}  // namespace

std::unique_ptr<UnitModel> MakeUnitModel(const PeftMethod& peft, ZeroEngine& engine, at::ScalarType dtype,
                                         at::Device device) {
  if (peft.config().family == ModelFamily::kBert) return std::make_unique<BertUnitModel>(peft, engine, dtype, device);
  return std::make_unique<LlamaUnitModel>(peft, engine, dtype, device);
}

}  // namespace shardtune
