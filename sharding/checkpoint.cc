#include "sharding/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/safetensors.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormatName = "shardtune-checkpoint";

std::string RankFileName(int rank) { return fmt::format("rank-{:05d}.safetensors", rank); }

json LayoutJson(const FlatParameters& flat) {
  json parameters = json::array();
  for (const auto& slot : flat.slots()) {
    parameters.push_back({{"name", slot.spec.name},
                          {"shape", slot.spec.shape},
                          {"offset", slot.offset},
                          {"numel", slot.numel},
                          {"weight_decay", slot.spec.weight_decay}});
  }
  return parameters;
}

TensorBytes Bytes(const char* name, const at::Tensor& tensor) {
  return TensorBytes{name, DType::kF32, {tensor.numel()}, tensor.data_ptr(), static_cast<size_t>(tensor.nbytes())};
}

void CopyInto(const SafetensorsFile& file, const char* name, at::Tensor& destination) {
  const TensorInfo* info = file.Find(name);
  if (info == nullptr) Fail(ErrorCode::kDataLoss, "{}: tensor '{}' is missing", file.path().string(), name);
  if (info->dtype != DType::kF32 || info->numel() != destination.numel()) {
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}' is {} x {}, expected F32 x {}", file.path().string(), name,
         DTypeName(info->dtype), info->numel(), destination.numel());
  }
  std::memcpy(destination.data_ptr(), file.Data(*info), info->end - info->begin);
}

json ParseJsonFile(const fs::path& path) {
  try {
    return json::parse(ReadFile(path));
  } catch (const json::parse_error& e) {
    Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", path.string(), e.what());
  }
}

}  // namespace

void SaveCheckpoint(const fs::path& dir, FlatParameters& flat, AdamW& optimizer, const TrainerState& state) {
  const fs::path staging = fs::path(dir.string() + ".tmp");
  fs::remove_all(staging);
  fs::create_directories(staging);

  const json index = {
      {"format", kFormatName},
      {"version", kCheckpointFormatVersion},
      {"world_size", 1},
      {"numel", flat.numel()},
      {"padded_numel", flat.padded_numel()},
      {"alignment", kFlatAlignment},
      {"parameters", LayoutJson(flat)},
      {"shards",
       json::array({{{"rank", 0}, {"file", RankFileName(0)}, {"offset", 0}, {"size", flat.padded_numel()}}})}};
  WriteFileAtomic(staging / "index.json", index.dump(2) + "\n");

  WriteSafetensors(staging / RankFileName(0),
                   {Bytes("values", flat.values()), Bytes("exp_avg", optimizer.exp_avg()),
                    Bytes("exp_avg_sq", optimizer.exp_avg_sq())},
                   {{"format", kFormatName}, {"optimizer_step", std::to_string(optimizer.step())}});

  const json trainer_state = {{"step", state.step},
                              {"tokens", state.tokens},
                              {"total_steps", state.total_steps},
                              {"optimizer_step", optimizer.step()},
                              {"rng", {{"scheme", "per-step seed from (training.seed, step)"}, {"seed", state.seed}}},
                              {"loss_scale", state.loss_scale}};
  WriteFileAtomic(staging / "trainer_state.json", trainer_state.dump(2) + "\n");

  fs::remove_all(dir);
  RenameDirectoryAtomic(staging, dir);
}

TrainerState LoadCheckpoint(const fs::path& dir, FlatParameters& flat, AdamW& optimizer) {
  const fs::path index_path = dir / "index.json";
  const json index = ParseJsonFile(index_path);
  if (index.value("format", "") != kFormatName || index.value("version", 0) != kCheckpointFormatVersion) {
    Fail(ErrorCode::kDataLoss, "{}: not a shardtune checkpoint of format version {}", index_path.string(),
         kCheckpointFormatVersion);
  }
  if (index.value("world_size", 0) != 1) {
    Fail(ErrorCode::kFailedPrecondition, "{}: written by {} ranks; this run has 1", index_path.string(),
         index.value("world_size", 0));
  }
  const json expected = LayoutJson(flat);
  const json& actual = index.at("parameters");
  if (actual != expected) {
    for (size_t i = 0; i < std::max(actual.size(), expected.size()); ++i) {
      const std::string have = i < actual.size() ? actual[i].dump() : "nothing";
      const std::string want = i < expected.size() ? expected[i].dump() : "nothing";
      if (have != want) {
        Fail(ErrorCode::kFailedPrecondition, "{}: parameter {} of the checkpoint is {} but the model's is {}",
             index_path.string(), i, have, want);
      }
    }
  }

  const auto file = SafetensorsFile::Open(dir / RankFileName(0));
  at::NoGradGuard no_grad;
  CopyInto(*file, "values", flat.values());
  CopyInto(*file, "exp_avg", optimizer.exp_avg());
  CopyInto(*file, "exp_avg_sq", optimizer.exp_avg_sq());

  const json state_json = ParseJsonFile(dir / "trainer_state.json");
  TrainerState state;
  try {
    state.step = state_json.at("step").get<int64_t>();
    state.tokens = state_json.at("tokens").get<int64_t>();
    state.total_steps = state_json.at("total_steps").get<int64_t>();
    state.seed = state_json.at("rng").at("seed").get<uint64_t>();
    state.loss_scale = state_json.at("loss_scale").get<double>();
    optimizer.set_step(state_json.at("optimizer_step").get<int64_t>());
  } catch (const json::exception& e) {
    Fail(ErrorCode::kDataLoss, "{}: {}", (dir / "trainer_state.json").string(), e.what());
  }
  return state;
}

std::optional<fs::path> LatestCheckpoint(const fs::path& checkpoints_dir) {
  static const std::regex kStepDir("step-([0-9]+)");
  std::optional<fs::path> best;
  int64_t best_step = -1;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return std::nullopt;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(name, match, kStepDir)) continue;
    const int64_t step = std::stoll(match[1]);
    if (step > best_step) best_step = step, best = entry.path();
  }
  return best;
}

void PruneCheckpoints(const fs::path& checkpoints_dir, int64_t keep) {
  if (keep <= 0) return;
  static const std::regex kStepDir("step-([0-9]+)");
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, match, kStepDir))
      found.emplace_back(std::stoll(match[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < found.size(); ++i) fs::remove_all(found[i].second);
}

}  // namespace shardtune
