#include "sharding/checkpoint.h"

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json ParseJsonFile(const fs::path& path) {
  try {
    return json::parse(ReadFile(path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
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
  WriteFileAtomic(CheckpointDir(dir).TrainerStateFile(), trainer_state.dump(2) + "\n");
}

TrainerState ReadTrainerState(const fs::path& dir) {
  const fs::path path = CheckpointDir(dir).TrainerStateFile();
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

}  // namespace shardtune
