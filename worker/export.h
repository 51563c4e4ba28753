#pragma once
// Exporting trained weights as a Hugging Face model directory, streamed unit by unit from the
// ZeRO engine (no rank ever holds more than one whole unit), and `shardtune export` of a
// training checkpoint.

#include <filesystem>
#include <string>

#include "common/job_spec.h"
#include "sharding/comm/communicator.h"
#include "sharding/zero_engine.h"

namespace shardtune {

// Collective: every rank of `world` calls it; rank 0 writes `out_dir` (config.json and the
// tokenizer files of `model_dir`, and the weights in `dtype`), assembled under a temporary name
// and renamed into place. `out_dir` must not exist.
void ExportHfModel(ZeroEngine& engine, Communicator& world, const std::filesystem::path& out_dir,
                   const std::filesystem::path& model_dir, ComputeDType dtype);

// `shardtune export CHECKPOINT_DIR --to hf --out DIR`: the model of a training checkpoint
// (output.dir/checkpoints/step-N, its job.yaml two levels up), on one process.
void ExportCheckpoint(const std::filesystem::path& checkpoint_dir, const std::string& to,
                      const std::filesystem::path& out_dir, ComputeDType dtype);

}  // namespace shardtune
