#include "sharding/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/atomic_file.h"
#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json ParseJsonFile(const fs::path& path) {
  try {
    return json::parse(ReadFile(path));
  } catch (const json::parse_error& e) {
    Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", path.string(), e.what());
  }
}

}  // namespace

void WriteTrainerState(const fs::path& dir, const TrainerState& state) {
  const json trainer_state = {
      {"step", state.step},
      {"tokens", state.tokens},
      {"total_steps", state.total_steps},
      {"rng", {{"scheme", "per-step seed from (training.seed, step)"}, {"seed", state.seed}}},
      {"loss_scale", state.loss_scale},
      {"best",
       {{"step", state.best_step}, {"value", state.best_value}, {"evaluations_since", state.evaluations_since_best}}}};
  WriteFileAtomic(dir / "trainer_state.json", trainer_state.dump(2) + "\n");
}

TrainerState ReadTrainerState(const fs::path& dir) {
  const fs::path path = dir / "trainer_state.json";
  const json state_json = ParseJsonFile(path);
  TrainerState state;
  try {
    state.step = state_json.at("step").get<int64_t>();
    state.tokens = state_json.at("tokens").get<int64_t>();
    state.total_steps = state_json.at("total_steps").get<int64_t>();
    state.seed = state_json.at("rng").at("seed").get<uint64_t>();
    state.loss_scale = state_json.at("loss_scale").get<double>();
    if (state_json.contains("best")) {  // absent in checkpoints of earlier versions
      const json& best = state_json.at("best");
      state.best_step = best.at("step").get<int64_t>();
      state.best_value = best.at("value").get<double>();
      state.evaluations_since_best = best.at("evaluations_since").get<int64_t>();
    }
  } catch (const json::exception& e) {
    Fail(ErrorCode::kDataLoss, "{}: {}", path.string(), e.what());
  }
  return state;
}

namespace {

// The complete checkpoints under `checkpoints_dir` (directories named step-N), by step.
std::vector<std::pair<int64_t, fs::path>> CompleteCheckpoints(const fs::path& checkpoints_dir) {
  static const std::regex kStepDir("step-([0-9]+)");
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return found;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    std::smatch match;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, match, kStepDir))
      found.emplace_back(std::stoll(match[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

std::optional<fs::path> LatestCheckpoint(const fs::path& checkpoints_dir) {
  const auto found = CompleteCheckpoints(checkpoints_dir);
  if (found.empty()) return std::nullopt;
  return found.back().second;
}

void PruneCheckpoints(const fs::path& checkpoints_dir, int64_t keep) {
  if (keep <= 0) return;
  const auto found = CompleteCheckpoints(checkpoints_dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < found.size(); ++i) fs::remove_all(found[i].second);
}

}  // namespace shardtune
