#pragma once
// ZeRO data parallelism (Rajbhandari et al., 2020) over one Communicator per process group.
//
// Every rank holds the model as units (parameter_layout.h). Per stage (zero_stage.h's table of
// what each stage shards; the engine acts on its fields):
//   0  parameters, gradients and optimizer state whole on every rank; gradients all-reduced
//      unit by unit as backward finishes each unit.
//   1  fp32 master weights and AdamW moments sharded; gradients accumulate whole and are
//      reduce-scattered at the accumulation boundary; each rank updates its shard; updated
//      parameters all-gathered.
//   2  as 1, and gradients are reduce-scattered unit by unit during every backward; only the
//      gradient shard persists.
//   3  as 2, and parameters are sharded too: a unit is all-gathered just before its forward and
//      again before its backward, and freed after each (units smaller than the persistence
//      threshold stay gathered). The next unit's gather is issued ahead (prefetch). Backward
//      uses the graph kept from forward (no recomputation unless activation checkpointing is
//      on): the gathered parameters' memory is freed, not their tensors, and refilled.
// With hybrid sharding (shard group smaller than the world), shards live within the shard
// group and gradient shards are also all-reduced across the replica group. Frozen units (the
// base model under LoRA and its kin) are held in the compute dtype only, whole at stages 0-2 and
// sharded at stage 3 (gathered for each use like any other unit); they have no gradient buffer,
// no reduction and no optimizer state. Quantized frozen units (QLoRA, quant4.h) are held as
// 4-bit records, sharded and gathered as bytes at stage 3, and dequantized into the compute dtype
// for each use (from the first Acquire to the last Release), at every stage.
//
// Stage 0 on the CPU, with more than one rank: a unit that is one table only looked up
// by rows (the input embedding, a call marked UnitUse::kRowLookup) has its dense gradient (a tied
// head's) all-reduced as soon as the lookup is its only use left, early in backward; the
// looked-up rows are gathered from every rank and added in rank order at the end. That reduction
// is no longer the last thing backward waits for, and an untied embedding sends its rows (tokens
// x width) instead of the whole table (vocabulary x width). Where the rows would outnumber the
// table they are summed densely instead.
//
// Contract: all ranks drive the engine through the same sequence of calls (the same units in
// the same order, the same number of micro-batches); the engine issues collectives in that
// order. One thread. The engine owns every parameter, gradient and optimizer buffer; tensors it
// hands out are valid until the matching Release or the next step.

#include <ATen/ATen.h>

#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "sharding/adamw.h"
#include "sharding/comm/communicator.h"
#include "sharding/gradient_slots.h"
#include "sharding/parameter_layout.h"
#include "sharding/weight_source.h"
#include "sharding/zero_stage.h"

namespace shardtune {

// How a unit call uses its units' parameters (ApplyUnits).
enum class UnitUse {
  kCompute,    // anything: its backward writes or returns dense gradients
  kRowLookup,  // it only looks rows of one table up (an embedding): its gradient is those rows
};

struct ProcessGroups {
  Communicator* world = nullptr;
  Communicator* shard = nullptr;    // ranks that together hold one copy of the sharded state
  Communicator* replica = nullptr;  // ranks holding the same shard (size 1 without hybrid)
};

// Builds the shard and replica groups: consecutive blocks of `shard_group_size` ranks (0: all).
struct OwnedProcessGroups {
  std::unique_ptr<Communicator> shard;
  std::unique_ptr<Communicator> replica;
  ProcessGroups groups;
};
OwnedProcessGroups MakeProcessGroups(Communicator& world, int64_t shard_group_size);

// The ranks of `world` on this rank's host (by host name), ordered by world rank: the ranks that
// share the reading of whole units at load (ZeroEngine::LoadWeights). Collective over `world`.
std::unique_ptr<Communicator> MakeNodeGroup(Communicator& world);

struct ZeroConfig {
  int stage = 0;
  at::ScalarType compute_dtype = at::kFloat;
  OptimizerSpec optimizer;
  int64_t persistence_threshold = 0;  // stage 3: units with fewer elements stay gathered
  int prefetch_units = 1;             // stage 3: units gathered ahead of use
  bool recompute = false;             // recompute each unit's forward in backward (activation checkpointing)
  at::Device device = at::kCPU;       // where every buffer lives (the communicators' device)
  // ZeRO-Offload: the fp32 master weights and the optimizer state in host memory, stepped there
  // from a host copy of the gradient shard; the parameters forward uses stay on `device`.
  bool offload_optimizer = false;

  // What of this configuration decides the model-state bytes (zero_stage.h).
  ModelStateConfig model_state() const {
    return ModelStateConfig{stage, static_cast<int64_t>(c10::elementSize(compute_dtype)), offload_optimizer,
                            persistence_threshold};
  }
};

// Parameters of the units a computation uses, by name.
class UnitParameters {
 public:
  const at::Tensor& operator()(const std::string& name) const;
  void Add(const std::string& name, at::Tensor tensor) { tensors_[name] = std::move(tensor); }
  const std::map<std::string, at::Tensor>& all() const { return tensors_; }

 private:
  std::map<std::string, at::Tensor> tensors_;
};

// A host copy of what one rank saves of a checkpoint (ZeroEngine::SnapshotShards). Writing it
// (WriteShardFile, WriteShardIndex) needs no engine and no collective, so any thread may do it.
struct ShardSnapshot {
  int file_rank = -1;  // the world rank whose rank file this rank writes; -1: none (a replica)
  at::Tensor values;   // (shard elements,) fp32 master weights of this rank's trainable shards, host
  at::Tensor exp_avg;  // (shard elements,) AdamW's moments, host
  at::Tensor exp_avg_sq;
  std::string index;  // index.json; world rank 0 only
};

enum class SnapshotMemory {
  kOwned,   // the snapshot's own memory: the engine may train on while it is written
  kShared,  // may alias the engine's host buffers: to be written before the next step
};

// Writes the snapshot's rank file into `dir`, fsynced (nothing when it has none).
void WriteShardFile(const ShardSnapshot& snapshot, const std::filesystem::path& dir);
// Writes index.json into `dir` from world rank 0's snapshot, once every rank's file is written:
// the index is what makes a directory a checkpoint (CheckpointDir::HasIndex).
void WriteShardIndex(const ShardSnapshot& snapshot, const std::filesystem::path& dir);

class ZeroEngine {
 public:
  ZeroEngine(const std::vector<UnitSpec>& units, const ZeroConfig& config, ProcessGroups groups);
  ~ZeroEngine();

  const ShardedLayout& layout() const { return layout_; }
  const ZeroConfig& config() const { return config_; }
  const ProcessGroups& groups() const { return groups_; }
  int UnitOf(const std::string& parameter) const;
  std::optional<int> FindUnit(const std::string& unit_name) const;

  enum class Units { kAll, kTrainable, kFrozen };

  // Fills the weights of `which` units from `source` (sharding/zero_load.cc). Values are those of
  // converting each parameter to fp32, then to the compute dtype (the fp32 master weights keep
  // the fp32 values), bit for bit whatever the stage or world size; alignment padding is zero.
  // Each rank reads only the elements it keeps: where parameters are sharded (stage 3) the
  // intersection of each parameter with its shard, with no whole unit built (a unit that stays
  // gathered is all-gathered from the shards). Where every rank keeps whole units (stages 0-2),
  // the ranks of `node` (MakeNodeGroup; null: this rank alone) each read 1/node->size() of every
  // unit and all-gather the pieces, so a host reads the weights once. Collective over the shard
  // group (stage 3) or `node`: every rank of them calls it with the same units.
  void LoadWeights(WeightSource& source, Units which = Units::kAll, Communicator* node = nullptr);
  // The same from whole fp32 tensors: `source(spec)` returns the parameter shaped as its spec.
  void LoadWeights(const std::function<at::Tensor(const ParameterSpec&)>& source, Units which = Units::kAll);

  // --- one optimizer step ---
  void BeginStep(int64_t step);
  // Marks the start of a micro-batch; `last` is the accumulation boundary.
  void BeginMicroBatch(bool last);

  // Parameters of `units`, gathered as needed, as views of compute dtype; with `requires_grad`
  // they are fresh leaves for an inner autograd graph. Balanced by Release(units).
  UnitParameters Acquire(const std::vector<int>& units, bool requires_grad);
  void Release(const std::vector<int>& units);
  // Release after a forward that kept its graph: as Release, except that the units of the last
  // forward call of a micro-batch, whose backward runs next, stay gathered for it (see
  // held_for_backward_).
  void ReleaseAfterForward(const std::vector<int>& units);
  // Backward of units whose forward graph was kept (no recompute): gathers their parameters
  // again into the storage that graph references. Balanced by Release(units).
  void Regather(const std::vector<int>& units);
  // Counts one forward use of each unit; each must be matched by one AddGradients with the same use.
  void NoteForwardUse(const std::vector<int>& units, UnitUse use);
  // Where the ops of a unit call's backward may write the gradients of `params` (one slot per
  // parameter of params.all(): the trainable fp32 ones; see gradient_slots.h).
  std::vector<GradientSlot> GradientSlotsFor(const UnitParameters& params, UnitUse use);
  // Adds a unit call's gradients for the named parameters: those in `grads` (undefined: no
  // contribution) to those its ops wrote into `slots`. When a unit has had every use of this
  // micro-batch back, its reduction is issued.
  void AddGradients(const std::vector<int>& units, const UnitParameters& params, const std::vector<at::Tensor>& grads,
                    const std::vector<GradientSlot>& slots, UnitUse use);

  // After the last backward of the step: waits for every reduction. Returns the global L2 norm
  // of the gradient.
  double FinishGradients();
  // Scales the gradient, updates the weights with AdamW at `lr`, and makes the new parameters
  // available for the next forward.
  void OptimizerStep(double lr, double grad_scale);

  // Streams the fp32 weights (or, after FinishGradients, the reduced gradient) of `which` units
  // in unit order; `sink` runs on every rank with one whole unit at a time (all ranks take part in
  // the gathers). Frozen units have no gradient and are skipped for kGradients.
  enum class Buffer { kWeights, kGradients };
  void ForEachUnitGathered(const std::function<void(const UnitLayout&, const at::Tensor& full_fp32)>& sink,
                           Buffer buffer = Buffer::kWeights, Units which = Units::kAll);

  // ModelStateBytes of this engine's layout and configuration: what it holds between steps.
  MemoryAccount memory() const;
  // Every tensor the engine holds memory in now (views and aliases included, each storage possibly
  // several times): what a test measures memory() against.
  std::vector<at::Tensor> HeldTensors() const;
  // What this rank's collectives have cost so far, over all its groups.
  CommStats comm_stats() const;

  // --- checkpoints (sharding/zero_checkpoint.cc) ---
  // Writes this rank's shards of the trainable units into `dir` if it holds the first copy of
  // them; world rank 0 also writes index.json. Frozen units are not saved: they are the base
  // model, loaded again from where it came. The caller creates `dir` and synchronizes the ranks.
  // The same as SnapshotShards (kShared), then WriteShardFile and WriteShardIndex.
  void SaveShards(const std::string& dir);
  // What SaveShards would write, taken now into `into` on every rank (no collectives; between
  // steps, on the engine's thread): the host copy an asynchronous checkpoint writes while
  // training goes on. With kOwned, `into`'s tensors are reused when they have the sizes needed,
  // so a run that checkpoints repeatedly holds one snapshot's host memory, not one per checkpoint.
  void SnapshotShards(ShardSnapshot& into, SnapshotMemory memory) const;
  // Loads the trainable units from a checkpoint written with any world size, stage or shard group size.
  void LoadShards(const std::string& dir);
  AdamW& optimizer() { return *optimizer_; }

 private:
  struct Unit;
  struct Pending;
  static bool Selected(const Unit& unit, Units which);
  // A unit's buffers, as the stage's policy and the dtype place them; `local` is its offset
  // into this rank's flat shards.
  std::unique_ptr<Unit> MakeUnit(const UnitLayout& layout, int shard_rank, int64_t local);
  // Zeroes what of a unit's whole gradient buffer no contribution wrote (before its reduction).
  void EnsureGradientBuffer(Unit& unit);
  void ZeroUnwritten(Unit& unit);
  void LoadShard(int u, WeightSource& source);                               // stage 3: this rank's shard of unit u
  void LoadWhole(Unit& unit, WeightSource& source, Communicator* node);      // stages 0-2: the whole unit
  void LoadQuantized(Unit& unit, WeightSource& source, Communicator* node);  // QLoRA's 4-bit units
  // A quantized unit's records [first, first + count) quantized from `source` into `out`, the
  // offsets of double quantization agreed over `group` (every rank of it calls with its range).
  void QuantizeRecords(const Unit& unit, int64_t first, int64_t count, WeightSource& source, Communicator* group,
                       uint8_t* out);
  void Dequantize(Unit& unit);  // fills unit.dequantized from its gathered records
  void IssueReduction(int u);
  void RetirePending(size_t keep);  // completes all but the newest `keep` reductions
  // Every rank's looked-up rows of unit u (LookedUpRows), added into its reduced gradient.
  void AddLookedUpRows(int u);
  static int64_t HeldRows(const Unit& unit);  // rows held (the table's row count once summed)
  void SumRows(Unit& unit);                   // adds the held rows into unit.rows_summed
  std::string IndexJson() const;              // the checkpoint's index.json
  void DropGathered();
  void PublishParameters();  // master weights -> the parameters forward uses
  void Gather(int u);
  void Ungather(Unit& unit);
  void FreeUse(Unit& unit);  // the memory of a use: dequantized weights, gathered parameters
  void GatherForUse(const std::vector<int>& units, bool backward);
  void WaitGathered(int u);
  CollectiveTag Tag(int u) const;
  at::TensorOptions Options(at::ScalarType dtype) const {
    return at::TensorOptions().dtype(dtype).device(config_.device);
  }

  ShardedLayout layout_;
  ZeroConfig config_;
  const StagePolicy& policy_;
  ProcessGroups groups_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::map<std::string, int> unit_of_;     // parameter name -> unit
  std::map<std::string, int> unit_index_;  // unit name -> unit
  // fp32 master weights: this rank's shards of every trainable unit, in order (whole where the
  // state is not sharded). One flat buffer, master_ (in host memory with offload); or, where the
  // parameters forward uses are fp32 and beside the optimizer (MasterIsParameters), the
  // parameters' own memory: each unit's shard of its whole parameters, or its parameter shard.
  at::Tensor master_;                      // empty where the master weights are the parameters
  std::vector<at::Tensor> master_pieces_;  // what the optimizer updates: {master_}, or one per unit
  at::Tensor grad_local_;                  // fp32, the gradient of the master weights, flat
  at::Tensor grad_host_;                   // offload: grad_local_'s host copy the step reads
  std::unique_ptr<AdamW> optimizer_;
  std::deque<std::unique_ptr<Pending>> pending_;  // reductions in flight, oldest first
  int64_t step_ = 0;
  bool last_micro_batch_ = true;
  // The last forward call of a micro-batch is the first whose backward runs (a tied head's,
  // right after the loss): releasing its units only to gather them again at once would leave
  // that gather with nothing to overlap (DeepSpeed keeps parameters reused within a distance;
  // FSDP keeps its root's). Which call that is, is learned: each first Regather after a forward
  // names the call last noted in it, and from then on that call's units stay gathered from its
  // forward to its backward, which releases them (a backward that never runs leaves its units
  // waiting for gradients: FinishGradients fails; DropGathered drops gathered copies before the
  // weights change).
  std::vector<int> last_forward_call_;
  std::vector<int> held_for_backward_;
  int64_t forward_calls_ = 0;  // calls noted in this forward; the held one was the held_call_-th
  int64_t held_call_ = 0;
  bool backward_began_ = false;
};

}  // namespace shardtune
