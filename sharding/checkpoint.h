#pragma once
// Training checkpoints: output.dir/checkpoints/step-N/ holds
//   index.json          format name and version, world size, the flat layout (every parameter's
//                       name, shape, offset, size) and which range of the buffer each rank owns
//   rank-KKKKK.safetensors   that rank's range of the fp32 values and both AdamW moments
//   trainer_state.json  step, data position, token count, RNG scheme, loss scale
// A checkpoint is written into step-N.tmp/ and renamed into place when complete, so a directory
// named step-N is always whole; leftovers named *.tmp are ignored.

#include <cstdint>
#include <filesystem>
#include <optional>

#include "sharding/adamw.h"
#include "sharding/flat_parameters.h"

namespace shardtune {

inline constexpr int kCheckpointFormatVersion = 1;

struct TrainerState {
  int64_t step = 0;         // optimizer steps completed; the data position follows from it
  int64_t tokens = 0;       // non-padding input tokens trained on so far
  uint64_t seed = 0;        // training.seed; step k's randomness is seeded from (seed, k)
  double loss_scale = 1.0;  // fp16 dynamic loss scale (1 for fp32 and bf16)
  int64_t total_steps = 0;  // of the run that wrote it, to refuse resuming a different plan
};

void SaveCheckpoint(const std::filesystem::path& dir, FlatParameters& flat, AdamW& optimizer,
                    const TrainerState& state);

// Loads `dir` into `flat` and `optimizer`, after checking that its layout is this model's.
TrainerState LoadCheckpoint(const std::filesystem::path& dir, FlatParameters& flat, AdamW& optimizer);

// The complete checkpoint with the highest step under `checkpoints_dir`, if any.
std::optional<std::filesystem::path> LatestCheckpoint(const std::filesystem::path& checkpoints_dir);

// Removes all but the newest `keep` complete checkpoints (keep = 0 keeps all).
void PruneCheckpoints(const std::filesystem::path& checkpoints_dir, int64_t keep);

}  // namespace shardtune
