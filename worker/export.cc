#include "worker/export.h"

#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"

namespace shardtune {

namespace fs = std::filesystem;

void ExportHfModel(ZeroEngine& engine, Communicator& world, const fs::path& out_dir, const fs::path& model_dir,
                   ComputeDType dtype) {
  const bool rank0 = world.rank() == 0;
  const fs::path staging = out_dir.string() + ".tmp";
  const at::ScalarType type = ToScalarType(dtype);
  std::unique_ptr<SafetensorsModelWriter> writer;
  if (rank0) {
    if (fs::exists(out_dir))
      Fail(ErrorCode::kFailedPrecondition, "{}: already exists; refusing to overwrite it", out_dir.string());
    fs::remove_all(staging);
    fs::create_directories(staging);
    WriteHfCompanions(staging, model_dir, dtype);
    std::vector<TensorMeta> metas;
    for (const auto& unit : engine.layout().units) {
      for (const auto& p : unit.parameters)
        metas.push_back(TensorMeta{p.spec.name, SafetensorsDTypeOf(type), p.spec.shape});
    }
    writer = std::make_unique<SafetensorsModelWriter>(staging, metas);
  }
  engine.ForEachUnitGathered([&](const UnitLayout& unit, const at::Tensor& full) {
    if (!writer) return;
    for (const auto& p : unit.parameters) {
      const at::Tensor tensor = full.narrow(0, p.offset, p.numel).to(type).cpu().contiguous();
      writer->Append(p.spec.name, tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()));
    }
  });
  if (rank0) {
    writer->Finish();
    RenameDirectoryAtomic(staging, out_dir);
  }
  world.Barrier(CollectiveTag{"export"});
}

void ExportCheckpoint(const fs::path& checkpoint_dir, const std::string& to, const fs::path& out_dir,
                      ComputeDType dtype) {
  if (to != "hf")
    Fail(ErrorCode::kUnimplemented,
         "--to {}: only hf is supported by this build (PEFT adapters come with PEFT methods)", to);
  if (!fs::exists(checkpoint_dir / "index.json")) {
    Fail(ErrorCode::kNotFound, "{}: not a checkpoint (no index.json); expected OUTPUT_DIR/checkpoints/step-N",
         checkpoint_dir.string());
  }
  const fs::path job = checkpoint_dir.parent_path().parent_path() / "job.yaml";
  const JobSpec spec = LoadJobSpec(job);
  const LlamaConfig config = LlamaConfig::Load(spec.model.path);
  SingleProcessCommunicator world;
  OwnedProcessGroups groups = MakeProcessGroups(world, 0);
  ZeroConfig zero;
  zero.optimizer = spec.training.optimizer;
  ZeroEngine engine(LlamaUnits(config), zero, groups.groups);
  engine.LoadShards(checkpoint_dir.string());
  ExportHfModel(engine, world, out_dir, spec.model.path, dtype);
  spdlog::info("exported {} (model {}) to {}", checkpoint_dir.string(), spec.model.path, out_dir.string());
}

}  // namespace shardtune
