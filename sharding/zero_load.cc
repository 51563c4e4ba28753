// ZeroEngine::LoadWeights: each rank reads only the bytes it keeps (docs/sharding.md, "Loading").

#include <ATen/core/grad_mode.h>
#include <unistd.h>

#include <climits>
#include <set>

#include "sharding/quant4.h"
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
    if (unit.layout->quant4) {
      LoadQuantized(unit, source, node);
    } else if (unit.parameter_storage == ParameterStorage::kWhole) {
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

void ZeroEngine::LoadQuantized(Unit& unit, WeightSource& source, Communicator* node) {
  const Quant4Format& format = *unit.layout->quant4;
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  // The records are written on the host; a unit on a device gets them by copy.
  auto on_host = [](const at::Tensor& t) {
    return t.is_cpu() ? t : at::empty(t.sizes(), t.options().device(at::kCPU));
  };
  if (unit.parameter_storage != ParameterStorage::kWhole) {  // stage 3: the records of this rank's shard
    at::Tensor shard = on_host(unit.param_shard);
    QuantizeRecords(unit, unit.shard_begin / per_record, unit.shard_size / per_record, source, groups_.shard,
                    shard.data_ptr<uint8_t>());
    if (!shard.is_same(unit.param_shard)) unit.param_shard.copy_(shard);
    if (unit.parameter_storage == ParameterStorage::kShardAndWhole) {
      groups_.shard->AllGather(unit.param_shard, unit.full, CollectiveTag{unit.layout->name + " (load)", step_})
          ->Wait();
    }
    return;
  }
  // Whole units: the ranks of the host quantize a piece of the records each, then gather them.
  const int pieces = node != nullptr ? node->size() : 1;
  const int mine = node != nullptr ? node->rank() : 0;
  const int64_t records = unit.layout->padded / per_record, piece = (records + pieces - 1) / pieces;
  at::Tensor whole = at::zeros({piece * pieces * record_bytes}, Options(at::kByte));
  at::Tensor part = whole.narrow(0, mine * piece * record_bytes, piece * record_bytes);
  at::Tensor written = on_host(part);
  written.zero_();
  const int64_t first = std::min(records, mine * piece), count = std::min(records, first + piece) - first;
  QuantizeRecords(unit, first, count, source, node, written.data_ptr<uint8_t>());
  if (!written.is_same(part)) part.copy_(written);
  if (pieces > 1) node->AllGather(part, whole, CollectiveTag{unit.layout->name + " (load)", step_})->Wait();
  unit.full.copy_(whole.narrow(0, 0, records * record_bytes));
}

void ZeroEngine::QuantizeRecords(const Unit& unit, int64_t first, int64_t count, WeightSource& source,
                                 Communicator* group, uint8_t* out) {
  const UnitLayout& l = *unit.layout;
  const Quant4Format& format = *l.quant4;
  const int64_t per_record = format.record_elements(), record_bytes = format.record_bytes();
  // Up to this many records of a parameter are read at once (16 Mi elements at block size 64).
  constexpr int64_t kRecordsPerRead = 1024;
  std::vector<float> absmax(count * kNestedBlockSize, 0.0f);  // this range's blocks, record by record
  std::vector<double> sums(l.padded / per_record, 0.0);       // every record's absmax sum; 0 where not ours
  std::vector<int64_t> blocks_in(count, 0);                   // real blocks of each of our records
  // The records [first, end) of parameter p, and the part of them in this range.
  struct Records {
    int64_t first, end, lo, hi;
  };
  auto records_of = [&](const ParameterSlot& p) {
    const int64_t p_first = p.offset / per_record, p_end = p_first + (p.numel + per_record - 1) / per_record;
    return Records{p_first, p_end, std::max(first, p_first), std::min(first + count, p_end)};
  };
  at::Tensor chunk;
  std::set<std::string> stored;  // parameters the source held as records (a pre-quantized checkpoint)
  for (const ParameterSlot& p : l.parameters) {
    const auto [p_first, p_end, lo, hi] = records_of(p);
    for (int64_t r = lo; r < hi; r += kRecordsPerRead) {
      const int64_t records = std::min(hi, r + kRecordsPerRead) - r;
      if (source.ReadRecords(p.spec, format, r - p_first, records, out + (r - first) * record_bytes)) {
        stored.insert(p.spec.name);
        continue;
      }
      const int64_t begin = (r - p_first) * per_record;  // inside the parameter
      const int64_t n = std::min(p.numel, (std::min(hi, r + kRecordsPerRead) - p_first) * per_record) - begin;
      if (!chunk.defined() || chunk.numel() < n) chunk = at::empty({n}, at::kFloat);
      source.Read(p.spec, begin, n, chunk.narrow(0, 0, n));
      QuantizeCodes(chunk.data_ptr<float>(), n, format, out + (r - first) * record_bytes,
                    absmax.data() + (r - first) * kNestedBlockSize);
      for (int64_t k = 0; k * per_record < n; ++k) {
        const int64_t blocks = (std::min(per_record, n - k * per_record) + format.block_size - 1) / format.block_size;
        blocks_in[r - first + k] = blocks;
        sums[r + k] = RecordAbsmaxSum(absmax.data() + (r - first + k) * kNestedBlockSize, blocks);
      }
    }
  }
  if (format.double_quant && group != nullptr && group->size() > 1) {
    // Each record's sum comes from the one rank that quantized it (0 + x is exact), so every rank
    // gets the same offsets as one process would compute.
    const at::Tensor host = at::from_blob(sums.data(), {static_cast<int64_t>(sums.size())}, at::kDouble);
    at::Tensor all = host.to(group->device());
    group->AllReduceSum(all, CollectiveTag{l.name + " (quantization offsets)", step_})->Wait();
    if (!all.is_same(host)) host.copy_(all);
  }
  for (const ParameterSlot& p : l.parameters) {
    const auto [p_first, p_end, lo, hi] = records_of(p);
    if (lo >= hi || stored.count(p.spec.name)) continue;
    const int64_t blocks = (p.numel + format.block_size - 1) / format.block_size;
    const float offset = format.double_quant
                             ? AbsmaxOffset(std::vector<double>(sums.begin() + p_first, sums.begin() + p_end), blocks)
                             : 0.0f;
    for (int64_t r = lo; r < hi; ++r) {
      EncodeRecordAbsmax(absmax.data() + (r - first) * kNestedBlockSize, blocks_in[r - first], offset, format,
                         out + (r - first) * record_bytes);
    }
  }
}

}  // namespace shardtune
