#pragma once
// Exporting trained weights: as a Hugging Face model directory, streamed unit by unit from the
// ZeRO engine (no rank ever holds more than one whole unit), with a parameter-efficient method's
// adapter merged in; and/or as a PEFT adapter. Also `shardtune export` of a training checkpoint.

#include <filesystem>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "sharding/comm/communicator.h"
#include "sharding/zero_engine.h"
#include "worker/peft/peft.h"

namespace shardtune {

// Collective: every rank of `world` calls it; rank 0 writes `out_dir`, assembled under a
// temporary name and renamed into place (`out_dir` must not exist):
//   hf    config.json and the tokenizer files of `model_dir`, and the weights in `dtype`
//         (LoRA, DoRA and IA3 merged into the base weights);
//   peft  adapter_config.json and adapter_model.safetensors.
void ExportModel(ZeroEngine& engine, Communicator& world, const PeftMethod& peft, const std::filesystem::path& out_dir,
                 const std::filesystem::path& model_dir, ComputeDType dtype, const std::vector<ExportFormat>& formats);

// `shardtune export CHECKPOINT_DIR --to hf|peft --out DIR`: the model of a training checkpoint
// (output.dir/checkpoints/step-N, its job.yaml two levels up), on one process.
void ExportCheckpoint(const std::filesystem::path& checkpoint_dir, const std::string& to,
                      const std::filesystem::path& out_dir, ComputeDType dtype);

}  // namespace shardtune
