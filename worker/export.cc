#include "worker/export.h"

#include <spdlog/spdlog.h>

#include <map>

#include "common/error.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"
#include "worker/peft/adapter_io.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

// Rank 0's copy of every trainable parameter of a PEFT method (small by construction).
std::map<std::string, at::Tensor> GatherTrainable(ZeroEngine& engine, bool keep) {
  std::map<std::string, at::Tensor> tensors;
  engine.ForEachUnitGathered(
      [&](const UnitLayout& unit, const at::Tensor& full) {
        if (!keep) return;
        for (const auto& p : unit.parameters)
          tensors[p.spec.name] = full.narrow(0, p.offset, p.numel).view(p.spec.shape).cpu().clone();
      },
      ZeroEngine::Buffer::kWeights, ZeroEngine::Units::kTrainable);
  return tensors;
}

void WriteMergedModel(ZeroEngine& engine, const PeftMethod& peft, const std::map<std::string, at::Tensor>& trainable,
                      const fs::path& staging, const fs::path& model_dir, ComputeDType dtype, bool rank0) {
  if (!peft.mergeable()) {
    Fail(ErrorCode::kInvalidArgument,
         "method '{}' adds computation, not weights: it cannot be exported as a merged "
         "Hugging Face model; export it as peft",
         ToString(peft.spec().type));
  }
  const at::ScalarType type = ToScalarType(dtype);
  // Base units stream through (merged); the trainable parameters that are model weights
  // (everything under full fine-tuning, modules_to_save otherwise) follow.
  const auto streamed = peft.full() ? ZeroEngine::Units::kAll : ZeroEngine::Units::kFrozen;
  std::unique_ptr<SafetensorsModelWriter> writer;
  if (rank0) {
    WriteHfCompanions(staging, model_dir, dtype, peft.config());
    std::vector<TensorMeta> metas;
    for (const auto& unit : engine.layout().units) {
      if (!unit.trainable || peft.full()) {
        for (const auto& p : unit.parameters)
          metas.push_back(TensorMeta{p.spec.name, SafetensorsDTypeOf(type), p.spec.shape});
      }
    }
    for (const auto& p : peft.saved_parameters())
      metas.push_back(TensorMeta{p.name, SafetensorsDTypeOf(type), p.shape});
    writer = std::make_unique<SafetensorsModelWriter>(staging, metas);
  }
  const TensorLookup adapter = [&](const std::string& name) { return trainable.at(name); };
  auto append = [&](const std::string& name, const at::Tensor& value) {
    const at::Tensor tensor = value.to(type).cpu().contiguous();
    writer->Append(name, tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()));
  };
  engine.ForEachUnitGathered(
      [&](const UnitLayout& unit, const at::Tensor& full) {
        if (!writer) return;
        for (const auto& p : unit.parameters) {
          const at::Tensor base = full.narrow(0, p.offset, p.numel).view(p.spec.shape);
          append(p.spec.name, peft.full() ? base : peft.Merged(p.spec.name, base.cpu(), adapter));
        }
      },
      ZeroEngine::Buffer::kWeights, streamed);
  if (writer) {
    for (const auto& p : peft.saved_parameters()) append(p.name, trainable.at(p.name));
    writer->Finish();
  }
}

}  // namespace

void ExportModel(ZeroEngine& engine, Communicator& world, const PeftMethod& peft, const fs::path& out_dir,
                 const fs::path& model_dir, ComputeDType dtype, const std::vector<ExportFormat>& formats) {
  const bool rank0 = world.rank() == 0;
  const StagedDirectory staged(out_dir, StagedDirectory::Existing::kRefuse);
  const fs::path& staging = staged.staging();
  if (rank0) staged.Begin();
  std::map<std::string, at::Tensor> trainable;
  if (!peft.full()) trainable = GatherTrainable(engine, rank0);
  for (ExportFormat format : formats) {
    if (format == ExportFormat::kHf) WriteMergedModel(engine, peft, trainable, staging, model_dir, dtype, rank0);
    if (format == ExportFormat::kPeft && rank0) WritePeftAdapter(staging, peft, model_dir.string(), trainable, dtype);
  }
  if (rank0) staged.Commit();
  world.Barrier(CollectiveTag{"export"});
}

void ExportCheckpoint(const fs::path& checkpoint_dir, const std::string& to, const fs::path& out_dir,
                      ComputeDType dtype) {
  const CheckpointDir checkpoint(checkpoint_dir);
  if (!checkpoint.HasIndex()) {
    Fail(ErrorCode::kNotFound, "{}: not a checkpoint (no index.json); expected OUTPUT_DIR/checkpoints/step-N",
         checkpoint_dir.string());
  }
  const fs::path job = checkpoint.Run().JobYaml();
  const JobSpec spec = LoadJobSpec(job);
  const ExportFormat format = to == "peft" ? ExportFormat::kPeft : ExportFormat::kHf;
  if (format == ExportFormat::kPeft && spec.method.type == MethodType::kFull) {
    Fail(ErrorCode::kInvalidArgument, "--to peft: {} was trained with method 'full'; there is no adapter (use --to hf)",
         checkpoint_dir.string());
  }
  ModelConfig config = ModelConfig::Load(spec.model.path);
  // The run's job.yaml records its classes.
  if (spec.model.task != ModelTask::kCausalLm) config.SetHead(spec.model.task, spec.model.labels);
  const PeftMethod peft(config, spec.method);
  SingleProcessCommunicator world;
  OwnedProcessGroups groups = MakeProcessGroups(world, 0);
  ZeroConfig zero;
  zero.optimizer = spec.training.optimizer;
  ZeroEngine engine(peft.Units(), zero, groups.groups);
  if (!peft.full()) {  // the frozen base model is not in the checkpoint
    const SafetensorsCheckpoint base = SafetensorsCheckpoint::Open(spec.model.path);
    engine.LoadWeights([&](const ParameterSpec& p) { return ReadHfTensor(base, spec.model.path, p); },
                       ZeroEngine::Units::kFrozen);
  }
  engine.LoadShards(checkpoint_dir.string());
  ExportModel(engine, world, peft, out_dir, spec.model.path, dtype, {format});
  spdlog::info("exported {} (model {}) to {}", checkpoint_dir.string(), spec.model.path, out_dir.string());
}

}  // namespace shardtune
