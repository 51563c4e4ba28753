#pragma once
// Exporting trained weights: as a Hugging Face model directory (LoRA, DoRA and IA3 merged into
// the base weights) and/or as a PEFT adapter; at the end of training from the ZeRO engine, and by
// `shardtune export` from a training checkpoint.
//
// Both write a model's files in parallel: the split into model-0000K-of-0000N.safetensors files
// is the one-process layout (common/safetensors.h, SafetensorsModelWriter), and file k is
// written by process k mod P of the P taking part. Process 0 also writes
// model.safetensors.index.json, config.json and the tokenizer files, and the adapter (small).
// The output directory is staged (StagedDirectory): process 0 creates it, every process writes
// its files into it, and process 0 renames it into place once all have finished, so it appears
// whole or not at all. No process holds more than one whole tensor (plus the adapter, which is
// small) at a time.

#include <filesystem>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "sharding/comm/communicator.h"
#include "sharding/zero_engine.h"
#include "worker/peft/peft.h"

namespace shardtune {

// Collective: every rank of `world` calls it (`out_dir` must not exist):
//   hf    config.json and the tokenizer files of `model_dir`, and the weights in `dtype`;
//   peft  adapter_config.json and adapter_model.safetensors.
// The units stream through the engine's gathers, which every rank sees; each rank writes the
// files that are its own.
void ExportModel(ZeroEngine& engine, Communicator& world, const PeftMethod& peft, const std::filesystem::path& out_dir,
                 const std::filesystem::path& model_dir, ComputeDType dtype, const std::vector<ExportFormat>& formats);

// `shardtune export CHECKPOINT_DIR --to hf|peft --out DIR [--np N]`.
struct CheckpointExport {
  std::filesystem::path checkpoint_dir;  // output.dir/checkpoints/step-N; its job.yaml two levels up
  ExportFormat format = ExportFormat::kHf;
  std::filesystem::path out_dir;  // must not exist
  ComputeDType dtype = ComputeDType::kFp32;
};

// Collective over `world` (one process, or the ranks mpirun started). Streams: each output
// tensor is read from the rank files that hold its pieces (sharding/checkpoint_reader.h), and for
// a merge the base weight from the model directory, one tensor at a time; no engine, no optimizer
// state. A checkpoint with a missing or truncated rank file fails before anything is written,
// naming the file.
void ExportCheckpoint(const CheckpointExport& request, Communicator& world);

// The most bytes of one model file: the writer's default, or the SHARDTUNE_TEST_EXPORT_SHARD_BYTES
// test knob (tests/README.md), which makes a small model several files.
uint64_t MaxModelFileBytes();

}  // namespace shardtune
