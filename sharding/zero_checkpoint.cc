// ZeroEngine's checkpoints: every rank that holds the first copy of a shard writes it, and the
// index records which range of which unit each file holds. Loading intersects the ranges this
// rank needs with the ranges each file holds, so any world size, stage or shard group size
// loads any other.

#include <ATen/core/grad_mode.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "sharding/checkpoint.h"
#include "sharding/zero_engine.h"
#include "sharding/zero_engine_internal.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormatName = kCheckpointFormatName;
constexpr int kFormatVersion = kCheckpointFormatVersion;

TensorBytes Bytes(const char* name, const at::Tensor& tensor) {
  return TensorBytes{name, DType::kF32, {tensor.numel()}, tensor.data_ptr(), static_cast<size_t>(tensor.nbytes())};
}

// The trainable units: what a checkpoint holds.
json LayoutJson(const ShardedLayout& layout) {
  json units = json::array();
  for (const auto& unit : layout.units) {
    if (!unit.trainable) continue;
    json parameters = json::array();
    for (const auto& p : unit.parameters) {
      parameters.push_back({{"name", p.spec.name}, {"shape", p.spec.shape}, {"offset", p.offset}, {"numel", p.numel}});
    }
    units.push_back({{"name", unit.name}, {"numel", unit.numel}, {"parameters", parameters}});
  }
  return units;
}

const float* TensorData(const SafetensorsFile& file, const char* name, int64_t expected) {
  const TensorInfo* info = file.Find(name);
  if (info == nullptr || info->dtype != DType::kF32 || info->numel() != expected) {
    Fail(ErrorCode::kDataLoss, "{}: expected an F32 tensor '{}' of {} elements", file.path().string(), name, expected);
  }
  return reinterpret_cast<const float*>(file.Data(*info));
}

template <typename UnitPointers>
std::vector<int> TrainableUnits(const UnitPointers& units) {
  std::vector<int> trainable;
  for (size_t u = 0; u < units.size(); ++u) {
    if (units[u]->trainable) trainable.push_back(static_cast<int>(u));
  }
  return trainable;
}

}  // namespace

void ZeroEngine::SaveShards(const std::string& dir) {
  ShardSnapshot snapshot;
  SnapshotShards(snapshot, SnapshotMemory::kShared);
  WriteShardFile(snapshot, dir);
  if (!snapshot.index.empty()) WriteShardIndex(snapshot, dir);
}

void ZeroEngine::SnapshotShards(ShardSnapshot& into, SnapshotMemory memory) const {
  at::NoGradGuard no_grad;
  // Unsharded, every rank holds the same whole state: rank 0 writes it. Sharded, the first rank of
  // each replica group writes its shard.
  const bool writer = policy_.shards_optimizer_state ? groups_.replica->rank() == 0 : groups_.world->rank() == 0;
  into.file_rank = writer ? groups_.world->rank() : -1;
  into.index = groups_.world->rank() == 0 ? IndexJson() : std::string();
  if (!writer) {
    into.values = into.exp_avg = into.exp_avg_sq = at::Tensor();
    return;
  }
  const int64_t local = layout_.trainable_shard_total();
  // Host memory of the snapshot's own: pinned when the state is on a GPU (a faster copy), reused
  // when the last snapshot's has the size (never when it aliases the engine's, as kShared may).
  auto own = [&](at::Tensor& target, const at::Tensor& source) -> at::Tensor& {
    const bool reusable =
        target.defined() && target.numel() == local && (!source.defined() || target.data_ptr() != source.data_ptr());
    if (!reusable) {
      target = at::empty({local}, at::TensorOptions().dtype(at::kFloat).pinned_memory(config_.device.is_cuda()));
    }
    return target;
  };
  // Master weights that are the parameters' memory are assembled on the host, unit by unit: a
  // device-side concatenation would hold them twice.
  if (MasterIsParameters(config_.model_state())) {
    at::Tensor& values = memory == SnapshotMemory::kOwned ? own(into.values, at::Tensor())
                                                          : (into.values = at::empty({local}, at::kFloat));
    for (const auto& unit : units_) {
      if (unit->trainable) unit->LocalSlice(values).copy_(unit->master);
    }
  } else if (memory == SnapshotMemory::kOwned) {
    own(into.values, master_).copy_(master_);
  } else {
    into.values = master_.cpu();  // the same memory where it is on the host already
  }
  const at::Tensor& exp_avg = optimizer_->exp_avg();
  const at::Tensor& exp_avg_sq = optimizer_->exp_avg_sq();
  if (memory == SnapshotMemory::kOwned) {
    own(into.exp_avg, exp_avg).copy_(exp_avg);
    own(into.exp_avg_sq, exp_avg_sq).copy_(exp_avg_sq);
  } else {
    into.exp_avg = exp_avg.cpu();
    into.exp_avg_sq = exp_avg_sq.cpu();
  }
}

std::string ZeroEngine::IndexJson() const {
  const std::vector<int> trainable = TrainableUnits(units_);
  // Writers are the ranks of the first shard group: world ranks 0 .. shard_count - 1.
  json files = json::array();
  for (int shard = 0; shard < layout_.shard_count; ++shard) {
    json ranges = json::array();
    int64_t local = 0;
    for (size_t u = 0; u < trainable.size(); ++u) {
      const UnitLayout& unit = *units_[trainable[u]]->layout;
      ranges.push_back(
          {{"unit", u}, {"begin", shard * unit.shard_size}, {"size", unit.shard_size}, {"local_offset", local}});
      local += unit.shard_size;
    }
    files.push_back(
        {{"file", CheckpointDir::RankFileName(shard)}, {"rank", shard}, {"elements", local}, {"ranges", ranges}});
  }
  const json index = {{"format", kFormatName},
                      {"version", kFormatVersion},
                      {"world_size", groups_.world->size()},
                      {"zero_stage", config_.stage},
                      {"shard_count", layout_.shard_count},
                      {"parameter_count", layout_.trainable_parameter_count()},
                      {"alignment", kFlatAlignment},
                      {"optimizer_step", optimizer_->step()},
                      {"units", LayoutJson(layout_)},
                      {"files", files}};
  return index.dump(1) + "\n";
}

void WriteShardFile(const ShardSnapshot& snapshot, const fs::path& dir) {
  if (snapshot.file_rank < 0) return;
  WriteSafetensors(
      CheckpointDir(dir).RankFile(snapshot.file_rank),
      {Bytes("values", snapshot.values), Bytes("exp_avg", snapshot.exp_avg), Bytes("exp_avg_sq", snapshot.exp_avg_sq)},
      {{"format", kFormatName}});
}

void WriteShardIndex(const ShardSnapshot& snapshot, const fs::path& dir) {
  ST_CHECK(!snapshot.index.empty(), "WriteShardIndex needs world rank 0's snapshot");
  WriteFileAtomic(CheckpointDir(dir).Index(), snapshot.index);
}

void ZeroEngine::LoadShards(const std::string& dir) {
  const fs::path index_path = CheckpointDir(dir).Index();
  json index;
  try {
    index = json::parse(ReadFile(index_path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", index_path.string(), e.what());
  }
  // Compared as JSON values: value() would throw on a non-object or a field of another type.
  if (!index.is_object() || index.find("format") == index.end() || index["format"] != kFormatName ||
      index.find("version") == index.end() || index["version"] != kFormatVersion) {
    Fail(ErrorCode::kDataLoss, "{}: not a shardtune checkpoint of format version {}", index_path.string(),
         kFormatVersion);
  }
  const json expected = LayoutJson(layout_);
  const json& actual = index.at("units");
  if (actual != expected) {
    for (size_t u = 0; u < std::max(actual.size(), expected.size()); ++u) {
      const std::string have = u < actual.size() ? actual[u].dump() : "nothing";
      const std::string want = u < expected.size() ? expected[u].dump() : "nothing";
      if (have != want) {
        Fail(ErrorCode::kFailedPrecondition, "{}: unit {} of the checkpoint is {} but this model's is {}",
             index_path.string(), u, have.substr(0, 300), want.substr(0, 300));
      }
    }
  }

  at::NoGradGuard no_grad;
  // Assembled on the host, then moved to where the engine keeps them.
  const int64_t local = layout_.trainable_shard_total();
  at::Tensor host[3] = {at::zeros({local}, at::kFloat), at::zeros({local}, at::kFloat), at::zeros({local}, at::kFloat)};
  const std::vector<int> trainable = TrainableUnits(units_);
  std::vector<int64_t> covered(trainable.size(), 0);
  for (const json& entry : index.at("files")) {
    const auto file = SafetensorsFile::Open(fs::path(dir) / entry.at("file").get<std::string>());
    const int64_t elements = entry.at("elements").get<int64_t>();
    const float* sources[3] = {TensorData(*file, "values", elements), TensorData(*file, "exp_avg", elements),
                               TensorData(*file, "exp_avg_sq", elements)};
    float* destinations[3] = {host[0].data_ptr<float>(), host[1].data_ptr<float>(), host[2].data_ptr<float>()};
    for (const json& range : entry.at("ranges")) {
      const auto u = range.at("unit").get<size_t>();
      ST_CHECK(u < trainable.size(), "checkpoint range names unit {}", u);
      const Unit& unit = *units_[trainable[u]];
      const int64_t file_begin = range.at("begin").get<int64_t>();
      const int64_t file_local = range.at("local_offset").get<int64_t>();
      const int64_t file_size = range.at("size").get<int64_t>();
      if (file_begin < 0 || file_local < 0 || file_size < 0 || file_local + file_size > elements) {
        Fail(ErrorCode::kDataLoss, "{}: range {} of {} lies outside its {} elements", index_path.string(), range.dump(),
             entry.at("file").get<std::string>(), elements);
      }
      // The overlap of what the file holds with what this rank needs, inside the real elements.
      const int64_t begin = std::max(file_begin, unit.shard_begin);
      const int64_t end = std::min({file_begin + file_size, unit.shard_begin + unit.shard_size, unit.layout->numel});
      if (begin >= end) continue;
      for (int k = 0; k < 3; ++k) {
        std::memcpy(destinations[k] + unit.local_offset + (begin - unit.shard_begin),
                    sources[k] + file_local + (begin - file_begin), static_cast<size_t>(end - begin) * sizeof(float));
      }
      covered[u] += end - begin;
    }
  }
  for (size_t u = 0; u < trainable.size(); ++u) {
    const Unit& unit = *units_[trainable[u]];
    const int64_t needed =
        std::max<int64_t>(0, std::min(unit.shard_begin + unit.shard_size, unit.layout->numel) - unit.shard_begin);
    if (covered[u] != needed) {
      Fail(ErrorCode::kDataLoss, "{}: the files cover {} of the {} elements of unit '{}' this rank needs",
           index_path.string(), covered[u], needed, unit.layout->name);
    }
  }
  for (const int u : trainable) units_[u]->master.copy_(units_[u]->LocalSlice(host[0]));
  optimizer_->exp_avg().copy_(host[1]);
  optimizer_->exp_avg_sq().copy_(host[2]);
  optimizer_->set_step(index.at("optimizer_step").get<int64_t>());
  DropGathered();
  PublishParameters();
}

}  // namespace shardtune
