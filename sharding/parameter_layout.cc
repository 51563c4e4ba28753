#include "sharding/parameter_layout.h"

namespace shardtune {

int64_t AlignUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

int64_t NumelOf(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

ShardedLayout PlanLayout(const std::vector<UnitSpec>& units, int shard_count) {
  ShardedLayout layout;
  layout.shard_count = shard_count;
  for (const auto& unit : units) {
    UnitLayout u;
    u.name = unit.name;
    u.trainable = unit.trainable;
    u.quant4 = unit.quant4;
    const int64_t alignment = u.alignment();
    int64_t offset = 0;
    for (const auto& spec : unit.parameters) {
      offset = AlignUp(offset, alignment);
      const int64_t numel = NumelOf(spec.shape);
      u.parameters.push_back(ParameterSlot{spec, offset, numel});
      offset += numel;
    }
    u.numel = offset;
    u.padded = AlignUp(std::max<int64_t>(offset, 1), alignment * shard_count);
    u.shard_size = u.padded / shard_count;
    layout.units.push_back(std::move(u));
  }
  return layout;
}

int64_t ShardedLayout::parameter_count() const {
  int64_t n = 0;
  for (const auto& unit : units)
    for (const auto& p : unit.parameters) n += p.numel;
  return n;
}

int64_t ShardedLayout::trainable_parameter_count() const {
  int64_t n = 0;
  for (const auto& unit : units)
    for (const auto& p : unit.parameters) n += unit.trainable ? p.numel : 0;
  return n;
}

int64_t ShardedLayout::padded_total() const {
  int64_t n = 0;
  for (const auto& unit : units) n += unit.padded;
  return n;
}

int64_t ShardedLayout::trainable_shard_total() const {
  int64_t n = 0;
  for (const auto& unit : units) n += unit.trainable ? unit.shard_size : 0;
  return n;
}

}  // namespace shardtune
