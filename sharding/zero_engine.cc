#include "sharding/zero_engine.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "sharding/quant4_ops.h"
#include "sharding/zero_engine_internal.h"

namespace shardtune {

OwnedProcessGroups MakeProcessGroups(Communicator& world, int64_t shard_group_size) {
  const int n = world.size();
  const int g = shard_group_size > 0 ? static_cast<int>(shard_group_size) : n;
  ST_CHECK(n % g == 0, "shard group size {} does not divide world size {}", g, n);
  const int rank = world.rank();
  OwnedProcessGroups owned;
  owned.shard = world.Split(rank / g, rank, fmt::format("shard group {}", rank / g));
  owned.replica = world.Split(rank % g, rank, fmt::format("replica group {}", rank % g));
  owned.groups = ProcessGroups{&world, owned.shard.get(), owned.replica.get()};
  return owned;
}

const at::Tensor& UnitParameters::operator()(const std::string& name) const {
  const auto it = tensors_.find(name);
  ST_CHECK(it != tensors_.end(), "parameter '{}' is not among the acquired units", name);
  return it->second;
}

ZeroEngine::ZeroEngine(const std::vector<UnitSpec>& units, const ZeroConfig& config, ProcessGroups groups)
    : config_(config), policy_(PolicyOfStage(config.stage)), groups_(groups) {
  const int shard_count = policy_.shards_optimizer_state ? groups.shard->size() : 1;
  const int shard_rank = policy_.shards_optimizer_state ? groups.shard->rank() : 0;
  layout_ = PlanLayout(units, shard_count);
  const bool master_is_parameters = MasterIsParameters(config.model_state());
  // Offloaded state lives in ordinary host memory. (LibTorch's page-locked allocator rounds
  // each block up to a power of two, up to twice the bytes planned; and a 16-bit upload converts
  // on the CPU into an unpinned temporary anyway.)
  const at::TensorOptions state =
      config.offload_optimizer ? at::TensorOptions().dtype(at::kFloat).device(at::kCPU) : Options(at::kFloat);
  const int64_t local_total = layout_.trainable_shard_total();
  master_ = at::zeros({master_is_parameters ? 0 : local_total}, state);
  if (!master_is_parameters) master_pieces_ = {master_};
  if (config.offload_optimizer) grad_host_ = at::zeros({local_total}, state);
  grad_local_ = at::zeros({local_total}, Options(at::kFloat));

  std::vector<DecayRange> decay;
  int64_t local = 0;
  for (size_t u = 0; u < layout_.units.size(); ++u) {
    const UnitLayout& l = layout_.units[u];
    unit_index_[l.name] = static_cast<int>(u);
    for (const auto& p : l.parameters) unit_of_[p.spec.name] = static_cast<int>(u);
    std::unique_ptr<Unit> unit = MakeUnit(l, shard_rank, local);
    if (l.trainable) {
      if (master_is_parameters) master_pieces_.push_back(unit->master);
      for (const auto& p : l.parameters) {
        if (!p.spec.weight_decay) continue;
        // The part of this parameter inside this rank's shard, in master_ coordinates.
        const int64_t begin = std::max(p.offset, unit->shard_begin);
        const int64_t end = std::min(p.offset + p.numel, unit->shard_begin + unit->shard_size);
        if (begin < end) decay.push_back({local + begin - unit->shard_begin, end - begin});
      }
      local += l.shard_size;
    }
    units_.push_back(std::move(unit));
  }
  optimizer_ = std::make_unique<AdamW>(config.optimizer, local_total, std::move(decay), master_.device());
}

std::unique_ptr<ZeroEngine::Unit> ZeroEngine::MakeUnit(const UnitLayout& l, int shard_rank, int64_t local) {
  auto unit = std::make_unique<Unit>();
  unit->layout = &l;
  unit->local_offset = local;
  unit->shard_begin = shard_rank * l.shard_size;
  unit->shard_size = l.shard_size;
  unit->trainable = l.trainable;
  // The compute-dtype parameters, frozen and trainable alike (in fp32 beside the optimizer, the
  // master weights' memory too).
  // A quantized unit holds its records' bytes.
  const at::ScalarType held = l.quant4 ? at::kByte : config_.compute_dtype;
  if (!policy_.shards_parameters) {
    unit->parameter_storage = ParameterStorage::kWhole;
  } else {
    unit->parameter_storage =
        StaysGathered(l, config_.model_state()) ? ParameterStorage::kShardAndWhole : ParameterStorage::kShardGathered;
    unit->param_shard = at::zeros({l.StoredBytes(l.shard_size, 1)}, Options(held));
  }
  if (unit->parameter_storage != ParameterStorage::kShardGathered) {
    unit->full = at::zeros({l.StoredBytes(l.padded, 1)}, Options(held));
  }
  if (!l.trainable) return unit;  // no master weights, gradient or optimizer state

  if (!MasterIsParameters(config_.model_state())) {
    unit->master_storage = MasterStorage::kOwnBuffer;
    unit->master = unit->LocalSlice(master_);
  } else if (unit->parameter_storage == ParameterStorage::kWhole) {
    unit->master_storage = MasterStorage::kInParameters;
    unit->master = unit->full.narrow(0, unit->shard_begin, unit->shard_size);
  } else {
    unit->master_storage = MasterStorage::kIsParameterShard;
    unit->master = unit->param_shard;
  }

  if (!policy_.shards_optimizer_state) {
    unit->gradient_storage = GradientStorage::kLocalGradient;
    unit->full_grad = grad_local_.narrow(0, local, l.padded);
    // A row lookup's gradient as rows (zero_engine.h): where the lookup's op keeps them
    // (EmbeddingFunction: on the CPU, into an fp32 slot) and there is more than one rank.
    unit->may_gather_rows = groups_.world->size() > 1 && config_.device.is_cpu() &&
                            config_.compute_dtype == at::kFloat && l.parameters.size() == 1 &&
                            l.parameters.front().spec.shape.size() == 2;
  } else if (!policy_.shards_gradients) {
    unit->gradient_storage = GradientStorage::kForStep;
    unit->full_grad = at::zeros({l.padded}, Options(at::kFloat));
  } else {
    unit->gradient_storage = GradientStorage::kPerMicroBatch;  // made by EnsureGradientBuffer
  }
  return unit;
}

ZeroEngine::~ZeroEngine() {
  // Only an error leaves collectives in flight here, and a failed MPI or NCCL operation may still
  // write into its buffers: keep them alive (leaked) rather than free memory a collective uses.
  auto* graveyard = new std::vector<at::Tensor>();
  for (auto& pending : pending_) {
    for (auto& t : pending->keep_alive) graveyard->push_back(t);
  }
  bool in_flight = !pending_.empty();
  for (auto& unit : units_) {
    if (unit->gather) {
      in_flight = true;
      graveyard->push_back(unit->full);
      graveyard->push_back(unit->param_shard);
    }
    if (in_flight) graveyard->insert(graveyard->end(), {unit->full, unit->full_grad});
  }
  if (in_flight) {
    graveyard->insert(graveyard->end(), {master_, grad_local_});
    for (auto& pending : pending_) (void)pending.release();  // their Work objects reference the buffers too
    for (auto& unit : units_) (void)unit->gather.release();
  } else {
    delete graveyard;
  }
}

int ZeroEngine::UnitOf(const std::string& parameter) const {
  const auto it = unit_of_.find(parameter);
  ST_CHECK(it != unit_of_.end(), "no unit holds parameter '{}'", parameter);
  return it->second;
}

std::optional<int> ZeroEngine::FindUnit(const std::string& unit_name) const {
  const auto it = unit_index_.find(unit_name);
  if (it == unit_index_.end()) return std::nullopt;
  return it->second;
}

bool ZeroEngine::Selected(const Unit& unit, Units which) {
  return which == Units::kAll || (which == Units::kTrainable) == unit.trainable;
}

CollectiveTag ZeroEngine::Tag(int u) const { return CollectiveTag{layout_.units[u].name, step_}; }

void ZeroEngine::BeginStep(int64_t step) {
  step_ = step;
  // Unsharded, the whole-unit buffers are grad_local_ itself (GradientStorage::kLocalGradient):
  // they start stale, written by the first contribution (see Unit::grad_written). Shards add up
  // reductions.
  if (policy_.shards_optimizer_state) grad_local_.zero_();
  for (auto& unit : units_) {
    unit->grad_written.assign(unit->layout->parameters.size(), false);
    unit->uses = 0;
    unit->lookup_uses = 0;
    unit->dense_use = false;
    unit->dense_reduced = false;
    unit->rows.clear();
    unit->rows_summed = at::Tensor();
  }
}

void ZeroEngine::BeginMicroBatch(bool last) {
  last_micro_batch_ = last;
  for (auto& unit : units_) {
    unit->uses = 0;
    unit->lookup_uses = 0;
  }
}

namespace {

void FreeStorage(const at::Tensor& tensor) {
  c10::StorageImpl* storage = tensor.storage().unsafeGetStorageImpl();
  storage->set_data_ptr(at::DataPtr(nullptr, tensor.device()));
  storage->set_nbytes(0);
}

void AllocateStorage(const at::Tensor& tensor) {
  c10::StorageImpl* storage = tensor.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(tensor.numel()) * tensor.element_size();
  storage->set_data_ptr(storage->allocator()->allocate(bytes));
  storage->set_nbytes(bytes);
}

// Dequantizes every parameter of a 4-bit unit from its whole `records` into `out` (the unit's
// padded elements, of any floating dtype, host memory), each parameter's records in parallel.
void DequantizeUnit(const UnitLayout& layout, const at::Tensor& records, const at::Tensor& out) {
  const Quant4Format& format = *layout.quant4;
  const int64_t per_record = format.record_elements();
  if (!out.device().is_cpu()) {  // tensor operations on the device
    for (const ParameterSlot& p : layout.parameters) {
      const int64_t first = format.RecordBytesFor(p.offset);
      const int64_t bytes = (p.numel + per_record - 1) / per_record * format.record_bytes();
      DequantizeRecordsWithOps(records.narrow(0, first, bytes), p.numel, format, out.narrow(0, p.offset, p.numel));
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "DequantizeUnit", [&] {
    scalar_t* values = out.data_ptr<scalar_t>();
    for (const ParameterSlot& p : layout.parameters) {
      const uint8_t* first = records.data_ptr<uint8_t>() + format.RecordBytesFor(p.offset);
      at::parallel_for(0, (p.numel + per_record - 1) / per_record, 1, [&](int64_t begin, int64_t end) {
        const int64_t count = std::min(end * per_record, p.numel) - begin * per_record;
        DequantizeRecords(first + begin * format.record_bytes(), count, format, values + p.offset + begin * per_record);
      });
    }
  });
}

}  // namespace

void ZeroEngine::Gather(int u) {
  Unit& unit = *units_[u];
  if (unit.full.defined() || unit.gather) return;
  if (!unit.gathered.defined()) {
    unit.gathered = at::empty({unit.param_shard.numel() * groups_.shard->size()}, unit.param_shard.options());
  } else {
    AllocateStorage(unit.gathered);
  }
  unit.full = unit.gathered;
  // Written through an alias with its own version counter: the gather must not count as an
  // in-place change of the parameters that a saved graph holds (they are the same values).
  unit.gather_target = unit.gathered.variable_data();
  unit.gather = groups_.shard->AllGather(unit.param_shard, unit.gather_target, Tag(u));
}

void ZeroEngine::Ungather(Unit& unit) {
  unit.full = at::Tensor();
  unit.gather_target = at::Tensor();
  if (unit.gathered.defined()) FreeStorage(unit.gathered);
}

void ZeroEngine::WaitGathered(int u) {
  Unit& unit = *units_[u];
  if (!unit.full.defined()) Gather(u);
  if (unit.gather) {
    unit.gather->Wait();
    unit.gather.reset();
  }
}

void ZeroEngine::GatherForUse(const std::vector<int>& units, bool backward) {
  auto gathered_per_use = [this](int u) { return units_[u]->parameter_storage == ParameterStorage::kShardGathered; };
  // A unit to gather ahead: gathered per use and, in backward, with a backward still to come.
  auto wanted = [&](int u) { return gathered_per_use(u) && (!backward || units_[u]->uses > 0); };
  // Prefetch: the neighbours of unit `from` in the current direction are the next units to be
  // needed: the next of the same kind (frozen base layers and their adapters alternate in use but
  // not in order); in backward, only a unit whose backward is still to come. A layer's 4-bit unit
  // (QLoRA) rides with its layer's: it takes no place of its own among the units ahead.
  auto prefetch = [&](int from) {
    const bool trainable = units_[from]->trainable;
    const int step = backward ? -1 : 1;
    int budget = config_.prefetch_units;
    for (int next = from + step; next >= 0 && next < static_cast<int>(units_.size()); next += step) {
      const Unit& candidate = *units_[next];
      const bool rides = candidate.layout->quant4.has_value();
      // Forward, a layer's 4-bit unit comes right after the layer's: fetched with it.
      if (budget == 0 && !(rides && !backward)) break;
      if (std::find(units.begin(), units.end(), next) != units.end()) continue;  // this call's own
      if (candidate.trainable == trainable && wanted(next)) {
        Gather(next);
        for (int b : candidate.borrowed) {
          if (wanted(b)) Gather(b);
        }
      }
      if (!rides) --budget;
    }
  };
  // The progress thread runs collectives one at a time in issue order, so this call's own
  // gathers go first: waiting for them must not mean waiting behind the next call's prefetch.
  for (int u : units) {
    if (gathered_per_use(u)) Gather(u);
  }
  // Prefetch from the unit that runs (the first listed) and from each unit of the other kind
  // that runs with it (a frozen layer's adapter), each to the next unit of its own kind. Others
  // of the first's kind are borrowed (a tied lm_head): they prefetch nothing, and are noted so
  // that a prefetch of the first gathers them too.
  Unit& first = *units_[units.front()];
  for (int u : units) {
    if (u != units.front() && units_[u]->trainable == first.trainable) {
      if (std::find(first.borrowed.begin(), first.borrowed.end(), u) == first.borrowed.end())
        first.borrowed.push_back(u);
    } else if (gathered_per_use(u)) {
      prefetch(u);
    }
  }
  for (int u : units) {
    Unit& unit = *units_[u];
    ++unit.acquired;
    if (gathered_per_use(u)) WaitGathered(u);
    if (unit.layout->quant4 && !unit.dequantized_live) Dequantize(unit);
  }
}

void ZeroEngine::Regather(const std::vector<int>& units) {
  if (!backward_began_) {
    backward_began_ = true;
    held_call_ = forward_calls_;
    held_for_backward_ = last_forward_call_;
  }
  GatherForUse(units, /*backward=*/true);
}

UnitParameters ZeroEngine::Acquire(const std::vector<int>& units, bool requires_grad) {
  // With recompute, parameters that require grad are asked for only in backward.
  GatherForUse(units, /*backward=*/requires_grad && config_.recompute);
  UnitParameters params;
  for (int u : units) {
    Unit& unit = *units_[u];
    for (const auto& p : unit.layout->parameters) {
      const at::Tensor& values = unit.layout->quant4 ? unit.dequantized : unit.full;
      at::Tensor view = values.narrow(0, p.offset, p.numel).view(p.spec.shape);
      if (requires_grad && unit.trainable) view = view.detach().requires_grad_(true);
      params.Add(p.spec.name, view);
    }
  }
  return params;
}

void ZeroEngine::Release(const std::vector<int>& units) {
  for (int u : units) {
    Unit& unit = *units_[u];
    if (--unit.acquired == 0) FreeUse(unit);
  }
}

void ZeroEngine::ReleaseAfterForward(const std::vector<int>& units) {
  // By position and units: another call may use the same units (the embedding's and the head's
  // under a PEFT method that trains only the tied embedding), and must not keep them gathered.
  if (forward_calls_ != held_call_ || units != held_for_backward_) return Release(units);
  for (int u : units) --units_[u]->acquired;  // its backward's Regather finds it gathered
}

void ZeroEngine::FreeUse(Unit& unit) {
  if (unit.dequantized_live) {  // dequantized again at the next use
    FreeStorage(unit.dequantized);
    unit.dequantized_live = false;
  }
  if (unit.parameter_storage == ParameterStorage::kShardGathered) Ungather(unit);  // gathered again at the next use
}

void ZeroEngine::Dequantize(Unit& unit) {
  const UnitLayout& l = *unit.layout;
  if (!unit.dequantized.defined()) {
    unit.dequantized = at::empty({l.padded}, Options(config_.compute_dtype));
  } else {
    AllocateStorage(unit.dequantized);
  }
  // Written through an alias with its own version counter (or its pointer, on the CPU): no in-place
  // change that a saved graph's version check would see. A scope of its own in a profiled step's
  // trace (make bench reads its share of the step).
  RECORD_FUNCTION("shardtune::dequantize_4bit", std::vector<c10::IValue>());
  DequantizeUnit(l, unit.full, unit.dequantized.variable_data());
  unit.dequantized_live = true;
}

void ZeroEngine::NoteForwardUse(const std::vector<int>& units, UnitUse use) {
  for (int u : units) {
    Unit& unit = *units_[u];
    ++unit.uses;
    if (!unit.may_gather_rows) continue;
    if (use == UnitUse::kRowLookup) {
      unit.gathers_rows = true;
      ++unit.lookup_uses;
    } else {
      unit.dense_use = true;
    }
  }
  if (backward_began_) forward_calls_ = 0;  // a new micro-batch's forward
  backward_began_ = false;
  ++forward_calls_;
  last_forward_call_ = units;
}

void ZeroEngine::EnsureGradientBuffer(Unit& unit) {
  if (unit.gradient_storage != GradientStorage::kPerMicroBatch || unit.full_grad.defined()) return;
  unit.full_grad = at::empty({unit.layout->padded}, Options(at::kFloat));
  unit.grad_written.assign(unit.layout->parameters.size(), false);
}

std::vector<GradientSlot> ZeroEngine::GradientSlotsFor(const UnitParameters& params, UnitUse use) {
  std::vector<GradientSlot> slots;
  for (const auto& [name, tensor] : params.all()) {
    GradientSlot& slot = slots.emplace_back();
    slot.parameter = tensor;
    if (!tensor.requires_grad() || tensor.scalar_type() != at::kFloat) continue;
    Unit& unit = *units_[UnitOf(name)];
    EnsureGradientBuffer(unit);
    const size_t k = unit.IndexOf(name);
    const ParameterSlot& place = unit.layout->parameters[k];
    slot.gradient = unit.full_grad.narrow(0, place.offset, place.numel).view(tensor.sizes());
    slot.written = unit.grad_written[k];
    if (use == UnitUse::kRowLookup && unit.gathers_rows) {
      slot.rows = &unit.rows;
    } else if (unit.dense_reduced) {
      slot.gradient = at::Tensor();  // in a reduction: an op returns its gradient, which AddGradients refuses
    }
  }
  return slots;
}

void ZeroEngine::AddGradients(const std::vector<int>& units, const UnitParameters& params,
                              const std::vector<at::Tensor>& grads, const std::vector<GradientSlot>& slots,
                              UnitUse use) {
  at::NoGradGuard no_grad;
  size_t i = 0;
  for (const auto& [name, tensor] : params.all()) {
    const at::Tensor& grad = grads[i];
    const bool written_in_place = slots[i++].written;
    if (!grad.defined() && !written_in_place) continue;
    Unit& unit = *units_[UnitOf(name)];
    if (unit.dense_reduced) {  // only lookups were left, and their ops kept rows (GradientSlotsFor)
      ST_CHECK(!grad.defined(), "unit {} got a dense gradient after its reduction was issued", unit.layout->name);
      continue;
    }
    EnsureGradientBuffer(unit);
    const size_t k = unit.IndexOf(name);
    if (written_in_place) unit.grad_written[k] = true;
    if (!grad.defined()) continue;
    const ParameterSlot& place = unit.layout->parameters[k];
    at::Tensor slot = unit.full_grad.narrow(0, place.offset, place.numel);
    const at::Tensor value = grad.reshape({-1}).to(at::kFloat);
    if (unit.grad_written[k]) {
      slot.add_(value);
    } else {
      slot.copy_(value);
      unit.grad_written[k] = true;
    }
  }
  for (int u : units) {
    Unit& unit = *units_[u];
    ST_CHECK(unit.uses > 0, "unit {} got gradients for more uses than its forward had", unit.layout->name);
    --unit.uses;
    if (use == UnitUse::kRowLookup && unit.gathers_rows) {
      --unit.lookup_uses;
      // Rows enough to go densely anyway (AddLookedUpRows): summed now, so that many
      // micro-batches hold no more than one table.
      if (HeldRows(unit) * groups_.world->size() >= unit.layout->parameters.front().spec.shape[0]) SumRows(unit);
    }
    if (!unit.trainable || !(policy_.shards_gradients || last_micro_batch_)) continue;
    if (unit.gathers_rows) {
      // The dense part (a tied head's) as soon as only lookups are left; their rows at the end
      // (FinishGradients). An untied embedding has no dense part.
      if (unit.uses == unit.lookup_uses && unit.dense_use && !unit.dense_reduced) {
        IssueReduction(u);
        unit.dense_reduced = true;
      }
    } else if (unit.uses == 0) {
      IssueReduction(u);
    }
  }
}

void ZeroEngine::ZeroUnwritten(Unit& unit) {
  // Parameters without a gradient, and the alignment padding between and after them.
  int64_t done = 0;
  const auto& parameters = unit.layout->parameters;
  for (size_t k = 0; k < parameters.size(); ++k) {
    const int64_t begin = parameters[k].offset, end = begin + parameters[k].numel;
    const bool written = k < unit.grad_written.size() && unit.grad_written[k];
    if (written && begin > done) unit.full_grad.narrow(0, done, begin - done).zero_();
    if (written) done = end;
  }
  if (done < unit.layout->padded) unit.full_grad.narrow(0, done, unit.layout->padded - done).zero_();
  unit.grad_written.assign(parameters.size(), true);
}

void ZeroEngine::IssueReduction(int u) {
  Unit& unit = *units_[u];
  ZeroUnwritten(unit);
  auto pending = std::make_unique<Pending>();
  switch (unit.gradient_storage) {
    case GradientStorage::kLocalGradient:  // every rank holds the whole: sum it over the world
      pending->work = groups_.world->AllReduceSum(unit.full_grad, Tag(u));
      break;
    case GradientStorage::kForStep: {  // the step's sum, straight into this rank's shard
      at::Tensor out = unit.LocalSlice(grad_local_);
      pending->work = groups_.shard->ReduceScatterSum(unit.full_grad, out, Tag(u));
      break;
    }
    case GradientStorage::kPerMicroBatch: {
      // Reduce this micro-batch's gradient now and free the whole-unit buffer; the shard adds up.
      at::Tensor out = at::empty({unit.shard_size}, Options(at::kFloat));
      pending->work = groups_.shard->ReduceScatterSum(unit.full_grad, out, Tag(u));
      pending->keep_alive = {unit.full_grad, out};
      at::Tensor destination = unit.LocalSlice(grad_local_);
      pending->then = [destination, out]() mutable { destination.add_(out); };
      unit.full_grad = at::Tensor();
      break;
    }
    case GradientStorage::kNone:
      Fail(ErrorCode::kInternal, "unit {} is frozen: it has no gradient to reduce", unit.layout->name);
  }
  pending_.push_back(std::move(pending));
  // Sharded gradients must not hold every unit's whole gradient until the step ends: a few
  // reductions in flight overlap backward as well as all of them would.
  if (policy_.shards_gradients) RetirePending(static_cast<size_t>(kReductionsInFlight));
}

void ZeroEngine::RetirePending(size_t keep) {
  while (pending_.size() > keep) {
    pending_.front()->work->Wait();
    if (pending_.front()->then) pending_.front()->then();
    pending_.pop_front();
  }
}

double ZeroEngine::FinishGradients() {
  RetirePending(0);
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& unit = *units_[u];
    ST_CHECK(unit.uses == 0, "unit {} still waits for {} gradients", unit.layout->name, unit.uses);
    // In grad_local_ itself, a unit no computation used this step had no reduction: its gradient is zero.
    if (unit.gradient_storage == GradientStorage::kLocalGradient) ZeroUnwritten(unit);
    if (unit.gathers_rows && unit.trainable) AddLookedUpRows(static_cast<int>(u));
  }
  if (policy_.shards_optimizer_state && groups_.replica->size() > 1) {
    groups_.replica->AllReduceSum(grad_local_, CollectiveTag{"gradient shards", step_})->Wait();
  }
  double squares = std::pow(grad_local_.norm().item<double>(), 2);
  if (policy_.shards_optimizer_state && groups_.shard->size() > 1) {
    at::Tensor sum = at::full({1}, squares, Options(at::kDouble));
    groups_.shard->AllReduceSum(sum, CollectiveTag{"gradient norm", step_})->Wait();
    squares = sum.item<double>();
  }
  return std::sqrt(squares);
}

int64_t ZeroEngine::HeldRows(const Unit& unit) {
  if (unit.rows_summed.defined()) return unit.layout->parameters.front().spec.shape[0];
  int64_t count = 0;
  for (const LookedUpRows& r : unit.rows) count += r.ids.numel();
  return count;
}

void ZeroEngine::SumRows(Unit& unit) {
  const std::vector<int64_t>& shape = unit.layout->parameters.front().spec.shape;
  if (!unit.rows_summed.defined()) unit.rows_summed = at::zeros({shape[0], shape[1]}, Options(at::kFloat));
  for (const LookedUpRows& r : unit.rows) unit.rows_summed.index_add_(0, r.ids, r.rows);
  unit.rows.clear();
}

void ZeroEngine::AddLookedUpRows(int u) {
  // Every rank takes part, with or without rows of its own. The counts first: each rank's rows
  // travel padded to the largest count; where that makes as many rows as the table has, the
  // rows are summed into a table on each rank and the tables all-reduced instead.
  Unit& unit = *units_[u];
  Communicator& world = *groups_.world;
  const CollectiveTag tag = Tag(u);
  const int n = world.size();
  const ParameterSlot& place = unit.layout->parameters.front();
  const int64_t table_rows = place.spec.shape[0], width = place.spec.shape[1];
  const at::Tensor gradient = unit.full_grad.narrow(0, place.offset, place.numel).view({table_rows, width});
  at::Tensor counts = at::empty({n}, Options(at::kLong));
  const at::Tensor own_count = at::full({1}, HeldRows(unit), Options(at::kLong));
  world.AllGather(own_count, counts, tag)->Wait();
  const int64_t most = counts.max().item<int64_t>();
  if (most * n >= table_rows) {
    SumRows(unit);
    world.AllReduceSum(unit.rows_summed, tag)->Wait();
    gradient.add_(unit.rows_summed);
    unit.rows_summed = at::Tensor();
    return;
  }
  at::Tensor ids = at::zeros({most}, Options(at::kLong)), rows = at::zeros({most, width}, Options(at::kFloat));
  int64_t filled = 0;
  for (const LookedUpRows& r : unit.rows) {
    const int64_t count = r.ids.numel();
    ids.narrow(0, filled, count).copy_(r.ids);
    rows.narrow(0, filled, count).copy_(r.rows);
    filled += count;
  }
  unit.rows.clear();
  at::Tensor every_id = at::empty({n * most}, Options(at::kLong));
  at::Tensor every_row = at::empty({n * most, width}, Options(at::kFloat));
  std::unique_ptr<Work> ids_gathered = world.AllGather(ids, every_id, tag);
  std::unique_ptr<Work> rows_gathered = world.AllGather(rows, every_row, tag);
  ids_gathered->Wait();
  rows_gathered->Wait();
  // In rank order on every rank: the replicas' gradients stay equal to the bit.
  for (int r = 0; r < n; ++r) {
    const int64_t count = counts[r].item<int64_t>();
    gradient.index_add_(0, every_id.narrow(0, r * most, count), every_row.narrow(0, r * most, count));
  }
}

void ZeroEngine::OptimizerStep(double lr, double grad_scale) {
  at::NoGradGuard no_grad;
  DropGathered();
  if (grad_host_.defined()) grad_host_.copy_(grad_local_);
  optimizer_->Step(master_pieces_, grad_host_.defined() ? grad_host_ : grad_local_, lr, grad_scale);
  PublishParameters();
}

void ZeroEngine::PublishParameters() {
  std::vector<std::unique_ptr<Pending>> gathers;
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& unit = *units_[u];
    if (!unit.trainable) continue;  // frozen weights never change
    const bool own_master = unit.master_storage == MasterStorage::kOwnBuffer;
    at::Tensor source;  // this rank's part of the whole parameters, to gather
    if (unit.parameter_storage == ParameterStorage::kWhole) {
      if (!policy_.shards_optimizer_state) {  // the master is the whole unit
        if (own_master) unit.full.copy_(unit.master);
        continue;
      }
      source = unit.master.to(config_.device, config_.compute_dtype);  // itself where it is already that
    } else {
      if (own_master) unit.param_shard.copy_(unit.master);
      if (unit.parameter_storage == ParameterStorage::kShardGathered) continue;  // gathered at its next use
      source = unit.param_shard;
    }
    auto pending = std::make_unique<Pending>();
    pending->work = groups_.shard->AllGather(source, unit.full, Tag(static_cast<int>(u)));
    pending->keep_alive = {source};
    gathers.push_back(std::move(pending));
  }
  for (auto& pending : gathers) pending->work->Wait();
}

void ZeroEngine::DropGathered() {
  // Gathered copies (prefetched, or left by evaluation) hold the old weights: drop them, after
  // any gather still reading the shards that are about to change.
  for (auto& unit : units_) {
    if (unit->gather) {
      unit->gather->Wait();
      unit->gather.reset();
    }
    if (unit->parameter_storage == ParameterStorage::kShardGathered && unit->acquired == 0) Ungather(*unit);
  }
}

void ZeroEngine::ForEachUnitGathered(const std::function<void(const UnitLayout&, const at::Tensor&)>& sink,
                                     Buffer buffer, Units which) {
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& unit = *units_[u];
    if (!Selected(unit, which) || (buffer == Buffer::kGradients && !unit.trainable)) continue;
    if (!unit.trainable) {
      at::Tensor whole = unit.full;
      if (unit.parameter_storage == ParameterStorage::kShardGathered) {
        whole = at::empty({unit.param_shard.numel() * groups_.shard->size()}, unit.param_shard.options());
        groups_.shard->AllGather(unit.param_shard, whole, CollectiveTag{unit.layout->name + " (export)", step_})
            ->Wait();
      }
      if (unit.layout->quant4) {  // the dequantized weights, in fp32
        at::Tensor values = at::zeros({unit.layout->padded}, at::kFloat);
        DequantizeUnit(*unit.layout, whole.cpu(), values);
        whole = values;
      }
      sink(*unit.layout, whole.to(at::kFloat));
      continue;
    }
    at::Tensor master = buffer == Buffer::kWeights ? unit.master : unit.LocalSlice(grad_local_);
    // Unsharded state, a single shard, or whole fp32 parameters (the published master): this
    // rank already holds the whole unit.
    if (buffer == Buffer::kWeights && unit.parameter_storage == ParameterStorage::kWhole &&
        unit.full.scalar_type() == at::kFloat) {
      master = unit.full;
    }
    if (master.numel() == unit.layout->padded) {
      sink(*unit.layout, master);
      continue;
    }
    at::Tensor whole = at::empty({unit.layout->padded}, Options(at::kFloat));
    groups_.shard->AllGather(master.to(config_.device), whole, CollectiveTag{unit.layout->name + " (export)", step_})
        ->Wait();
    sink(*unit.layout, whole);
  }
}

MemoryAccount ZeroEngine::memory() const { return ModelStateBytes(layout_, config_.model_state()); }

std::vector<at::Tensor> ZeroEngine::HeldTensors() const {
  std::vector<at::Tensor> held = {master_, grad_local_, grad_host_, optimizer_->exp_avg(), optimizer_->exp_avg_sq()};
  for (const auto& unit : units_) {
    held.insert(held.end(),
                {unit->full, unit->master, unit->param_shard, unit->gathered, unit->dequantized, unit->full_grad});
  }
  for (const auto& pending : pending_) held.insert(held.end(), pending->keep_alive.begin(), pending->keep_alive.end());
  return held;
}

CommStats ZeroEngine::comm_stats() const {
  CommStats stats = groups_.world->stats();
  if (groups_.shard != groups_.world) stats += groups_.shard->stats();
  if (groups_.replica != groups_.world && groups_.replica != groups_.shard) stats += groups_.replica->stats();
  return stats;
}

}  // namespace shardtune
