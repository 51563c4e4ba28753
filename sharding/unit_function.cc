#include "sharding/unit_function.h"

#include <ATen/Context.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <memory>
#include <mutex>
#include <unordered_map>

#include "common/error.h"

namespace shardtune {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct UnitCall {
  ZeroEngine* engine = nullptr;
  std::vector<int> units;
  UnitCompute compute;
  UnitUse use = UnitUse::kCompute;
  bool recompute = false;
  // With recompute: the random generator's state at forward, so that the recomputation draws
  // the same dropout masks.
  at::Tensor rng_state;
  // Without recompute: the inner graph from forward.
  at::Tensor inner_input;
  at::Tensor inner_output;
  UnitParameters inner_params;
};

// Calls between their forward and their backward, by id. An autograd context can carry only
// IValues, so it carries the id. One thread at a time runs forward or backward: the training
// thread, or (for a backward on a GPU) autograd's thread for that device while the training
// thread waits in backward().
std::unordered_map<int64_t, std::shared_ptr<UnitCall>>& Calls() {
  static std::unordered_map<int64_t, std::shared_ptr<UnitCall>> calls;
  return calls;
}
int64_t g_next_call = 0;

at::Tensor AsLeaf(const at::Tensor& input) {
  return input.is_floating_point() ? input.detach().requires_grad_(true) : input.detach();
}

class UnitFunction : public torch::autograd::Function<UnitFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::Tensor input, at::Tensor anchor, int64_t id) {
    UnitCall& call = *Calls().at(id);
    ctx->saved_data["call"] = id;
    ZeroEngine& engine = *call.engine;
    engine.NoteForwardUse(call.units, call.use);
    if (call.recompute) {
      ctx->save_for_backward({input});
      call.rng_state = RngState(engine);
      const UnitParameters params = engine.Acquire(call.units, /*requires_grad=*/false);
      at::Tensor output = call.compute(input, params);
      engine.Release(call.units);
      return {output};
    }
    at::AutoGradMode grad_mode(true);
    call.inner_params = engine.Acquire(call.units, /*requires_grad=*/true);
    call.inner_input = AsLeaf(input);
    call.inner_output = call.compute(call.inner_input, call.inner_params);
    engine.ReleaseAfterForward(call.units);
    return {call.inner_output.detach()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const int64_t id = ctx->saved_data["call"].toInt();
    const std::shared_ptr<UnitCall> call = Calls().at(id);
    Calls().erase(id);
    ZeroEngine& engine = *call->engine;
    at::Tensor leaf = call->inner_input, output = call->inner_output;
    UnitParameters params = call->inner_params;
    if (!call->recompute) {
      engine.Regather(call->units);
    } else {
      params = engine.Acquire(call->units, /*requires_grad=*/true);
      leaf = AsLeaf(ctx->get_saved_variables()[0]);
      const at::Tensor now = RngState(engine);
      SetRngState(engine, call->rng_state);
      at::AutoGradMode grad_mode(true);
      output = call->compute(leaf, params);
      SetRngState(engine, now);
    }
    // Only trainable parameters require grad; frozen ones (a PEFT base model) get none.
    variable_list inputs;
    const bool input_grad = leaf.requires_grad();
    if (input_grad) inputs.push_back(leaf);
    for (const auto& [name, tensor] : params.all()) {
      if (tensor.requires_grad()) inputs.push_back(tensor);
    }
    std::vector<GradientSlot> slots = engine.GradientSlotsFor(params, call->use);
    variable_list grads;
    if (!inputs.empty() && output.requires_grad()) {
      const ScopedGradientSlots installed(slots);
      grads = torch::autograd::grad({output}, inputs, {grad_outputs[0]}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    } else {
      grads.resize(inputs.size());
    }
    std::vector<at::Tensor> parameter_grads;
    size_t next = input_grad ? 1 : 0;
    for (const auto& [name, tensor] : params.all())
      parameter_grads.push_back(tensor.requires_grad() ? grads[next++] : at::Tensor());
    engine.AddGradients(call->units, params, parameter_grads, slots, call->use);
    engine.Release(call->units);
    return {input_grad ? grads[0] : at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  static at::Tensor RngState(ZeroEngine& engine) {
    at::Generator generator = at::globalContext().defaultGenerator(engine.config().device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    return generator.get_state();
  }
  static void SetRngState(ZeroEngine& engine, const at::Tensor& state) {
    at::Generator generator = at::globalContext().defaultGenerator(engine.config().device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state);
  }
};

}  // namespace

at::Tensor ApplyUnits(ZeroEngine& engine, const std::vector<int>& units, const at::Tensor& input, UnitCompute compute,
                      UnitUse use) {
  bool trainable = false;
  for (int u : units) trainable = trainable || engine.layout().units[u].trainable;
  // Nothing to differentiate (a frozen embedding under a PEFT method): no graph node either.
  if (!at::GradMode::is_enabled() || (!trainable && !input.requires_grad())) {
    const UnitParameters params = engine.Acquire(units, /*requires_grad=*/false);
    at::Tensor output = compute(input, params);
    engine.Release(units);
    return output;
  }
  // Every unit call must be a graph node even when its input needs no gradient (the embedding's
  // token ids): this constant that "requires grad" makes it one.
  static const at::Tensor anchor = at::zeros({}, at::kFloat).requires_grad_(true);
  auto call = std::make_shared<UnitCall>();
  call->engine = &engine;
  call->units = units;
  call->compute = std::move(compute);
  call->use = use;
  call->recompute = engine.config().recompute;
  const int64_t id = g_next_call++;
  Calls()[id] = call;
  return UnitFunction::apply(input, anchor, id)[0];
}

void DropPendingUnitCalls() { Calls().clear(); }

}  // namespace shardtune
