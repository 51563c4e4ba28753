// ZeroEngine::LoadWeights: each rank reads only the bytes it keeps (docs/sharding.md, "Loading").

#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <climits>

#include "sharding/zero_engine.h"
#include "sharding/zero_engine_internal.h"

namespace shardtune {

namespace {

// Fills `target` with elements [begin, begin + target.numel()) of `unit`'s flat buffer: each
// parameter's part of that range from `source`, zero elsewhere (alignment and padding).
void ReadUnitRange(const UnitLayout& unit, int64_t begin, at::Tensor target, WeightSource& source) {
  target.zero_();
  const int64_t end = begin + target.numel();
  for (const ParameterSlot& p : unit.parameters) {
    const int64_t lo = std::max(p.offset, begin), hi = std::min(p.offset + p.numel, end);
    if (lo < hi) source.Read(p.spec, lo - p.offset, hi - lo, target.narrow(0, lo - begin, hi - lo));
  }
}

uint64_t HostNameHash() {
  char name[HOST_NAME_MAX + 1] = {};
  ST_SYSCALL_CHECK(::gethostname(name, sizeof(name) - 1), "gethostname");
  uint64_t hash = 1469598103934665603ULL;  // FNV-1a
  for (const char* c = name; *c != '\0'; ++c) hash = (hash ^ static_cast<unsigned char>(*c)) * 1099511628211ULL;
  return hash;
}

}  // namespace

std::unique_ptr<Communicator> MakeNodeGroup(Communicator& world) {
  // Every rank learns every rank's host; a host's group is named by its lowest world rank.
  const at::TensorOptions options = at::TensorOptions().dtype(at::kLong).device(world.device());
  at::Tensor mine = at::full({1}, static_cast<int64_t>(HostNameHash()), options);
  at::Tensor all = at::empty({world.size()}, options);
  world.AllGather(mine, all, CollectiveTag{"host names"})->Wait();
  const at::Tensor hosts = all.cpu();
  const int64_t* hash = hosts.data_ptr<int64_t>();
  int color = world.rank();
  for (int r = 0; r < world.size(); ++r) {
    if (hash[r] == hash[world.rank()]) {
      color = r;
      break;
    }
  }
  return world.Split(color, world.rank(), fmt::format("node of rank {}", color));
}

void ZeroEngine::LoadWeights(WeightSource& source, Units which, Communicator* node) {
  at::NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    Unit& unit = *units_[u];
    if (!Selected(unit, which)) continue;
    if (unit.parameter_storage == ParameterStorage::kWhole) {
      LoadWhole(unit, source, node);
    } else {
      LoadShard(static_cast<int>(u), source);
    }
  }
}

void ZeroEngine::LoadWeights(const std::function<at::Tensor(const ParameterSpec&)>& source, Units which) {
  WholeTensorSource whole(source);
  LoadWeights(whole, which);
}

void ZeroEngine::LoadShard(int u, WeightSource& source) {
  Unit& unit = *units_[u];
  // A separate fp32 master is read first and the compute-dtype shard rounded from it: the
  // values of converting through fp32, with the source read once.
  const bool own_master = unit.master_storage == MasterStorage::kOwnBuffer;
  ReadUnitRange(*unit.layout, unit.shard_begin, own_master ? unit.master : unit.param_shard, source);
  if (own_master) unit.param_shard.copy_(unit.master);
  if (unit.parameter_storage == ParameterStorage::kShardAndWhole) {
    groups_.shard->AllGather(unit.param_shard, unit.full, CollectiveTag{unit.layout->name + " (load)", step_})->Wait();
  }
}

void ZeroEngine::LoadWhole(Unit& unit, WeightSource& source, Communicator* node) {
  const int pieces = node != nullptr ? node->size() : 1;
  const int mine = node != nullptr ? node->rank() : 0;
  const int64_t padded = unit.layout->padded;
  const int64_t piece = (padded + pieces - 1) / pieces;
  // A separate fp32 master needs the fp32 values (today's whole-unit conversion); otherwise the
  // pieces are gathered in the compute dtype, straight into `full` where they tile it exactly.
  const bool own_master = unit.master_storage == MasterStorage::kOwnBuffer;
  at::Tensor whole = !own_master && piece * pieces == padded
                         ? unit.full
                         : at::empty({piece * pieces}, Options(own_master ? at::kFloat : config_.compute_dtype));
  at::Tensor part = whole.narrow(0, mine * piece, piece);
  ReadUnitRange(*unit.layout, mine * piece, part, source);
  if (pieces > 1) node->AllGather(part, whole, CollectiveTag{unit.layout->name + " (load)", step_})->Wait();
  if (!whole.is_same(unit.full)) unit.full.copy_(whole.narrow(0, 0, padded));
  if (own_master) unit.master.copy_(whole.narrow(0, unit.shard_begin, unit.shard_size));
}

}  // namespace shardtune
