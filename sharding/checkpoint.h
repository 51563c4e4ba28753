#pragma once
// Training checkpoints: output.dir/checkpoints/step-N/ (common/run_dir.h names the files) holds
//   index.json               format and version, world size, stage, the unit layout, and which
//                            range of which unit each rank file holds (ZeroEngine::SaveShards)
//   rank-KKKKK.safetensors   a rank's shards: fp32 weights ("values") and AdamW's moments
//   trainer_state.json       step, token count, RNG scheme, loss scale, planned steps
// A checkpoint is assembled in step-N.tmp/ and renamed into place when complete (StagedDirectory),
// so a directory named step-N is always whole and a crash mid-save leaves the previous one intact.
// RunDir lists, finds and prunes them.

#include <cstdint>
#include <filesystem>

namespace shardtune {

// index.json's "format" and "version": what ZeroEngine::SaveShards writes and every reader checks.
inline constexpr const char* kCheckpointFormatName = "shardtune-checkpoint";
inline constexpr int kCheckpointFormatVersion = 1;

struct TrainerState {
  int64_t step = 0;         // optimizer steps completed; the data position follows from it
  int64_t tokens = 0;       // non-padding input tokens trained on so far
  uint64_t seed = 0;        // training.seed; step k's randomness is seeded from (seed, k)
  double loss_scale = 1.0;  // fp16 dynamic loss scale (1 for fp32 and bf16)
  int64_t total_steps = 0;  // of the run that wrote it, to refuse resuming a different plan
  // The best evaluation so far (early stopping and output.keep_best): its step (0: none yet),
  // its metric, and the evaluations since that did not improve on it.
  int64_t best_step = 0;
  double best_value = 0.0;
  int64_t evaluations_since_best = 0;
};

// trainer_state.json of the checkpoint directory `dir`.
void WriteTrainerState(const std::filesystem::path& dir, const TrainerState& state);
TrainerState ReadTrainerState(const std::filesystem::path& dir);

}  // namespace shardtune
