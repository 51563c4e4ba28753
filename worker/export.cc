#include "worker/export.h"

#include <ATen/Parallel.h>
#include <fmt/ranges.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>

#include "common/error.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "common/test_knobs.h"
#include "sharding/checkpoint_reader.h"
#include "sharding/model_layout.h"
#include "sharding/prequantized.h"
#include "worker/models/hf_io.h"
#include "worker/peft/adapter_io.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

void RequireMergeable(const PeftMethod& peft) {
  if (!peft.mergeable()) {
    Fail(ErrorCode::kInvalidArgument,
         "method '{}' adds computation, not weights: it cannot be exported as a merged "
         "Hugging Face model; export it as peft",
         ToString(peft.spec().type));
  }
}

// The units whose parameters are the merged model's: the base model's (every unit under full
// fine-tuning). The trainable parameters that are model weights otherwise (modules_to_save)
// follow them.
bool Streamed(const PeftMethod& peft, const UnitSpec& unit) { return peft.full() || !unit.trainable; }

// One intra-op thread while it lives. A merge runs on one thread: LoRA's B x A is a BLAS product
// whose rounding depends on how many threads compute it (1 and 2 threads were seen to give other
// bits for the ~1.1B model), and an exported model's bytes must not depend on which process,
// rank or thread count wrote it. The products are of rank r: cheap on one thread.
class OneThread {
 public:
  OneThread() : previous_(at::get_num_threads()) { SetThreads(1); }
  ~OneThread() { SetThreads(previous_); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  // OpenBLAS (its OpenMP build) and shardtune's own loops follow OpenMP's count; LibTorch keeps its own.
  static void SetThreads(int threads) {
    at::set_num_threads(threads);
    omp_set_num_threads(threads);
  }
  int previous_;
};

// This process's share of a merged Hugging Face model's files: the declared tensors, in the
// order the model's units lay them out and then the modules_to_save, converted to `dtype` one at
// a time; on the share's process 0 also config.json and the tokenizer and generation files.
class MergedModelFiles {
 public:
  MergedModelFiles(const PeftMethod& peft, const fs::path& staging, const fs::path& model_dir, ComputeDType dtype,
                   FileShare share)
      : peft_(peft), type_(ToScalarType(dtype)), writer_(staging, Tensors(peft, type_), MaxModelFileBytes(), share) {
    if (share.index == 0) WriteHfCompanions(staging, model_dir, dtype, peft.config());
  }

  bool Writes(const std::string& name) const { return writer_.Writes(name); }

  // A parameter of a streamed unit, fp32: as trained, or a base weight to merge the adapter into.
  void AppendUnitParameter(const std::string& name, const at::Tensor& value, const TensorLookup& adapter) {
    if (peft_.full()) return Append(name, value);
    at::Tensor merged;
    {
      const OneThread one_thread;
      merged = peft_.Merged(name, value.cpu(), adapter);
    }
    Append(name, merged);
  }

  // The modules_to_save of this process's files, then the files' completion (and the index).
  void Finish(const TensorLookup& trainable) {
    for (const auto& p : peft_.saved_parameters()) {
      if (Writes(p.name)) Append(p.name, trainable(p.name));
    }
    writer_.Finish();
  }

 private:
  static std::vector<TensorMeta> Tensors(const PeftMethod& peft, at::ScalarType type) {
    std::vector<TensorMeta> metas;
    for (const UnitSpec& unit : peft.Units()) {
      if (!Streamed(peft, unit)) continue;
      for (const auto& p : unit.parameters) metas.push_back(TensorMeta{p.name, SafetensorsDTypeOf(type), p.shape});
    }
    for (const auto& p : peft.saved_parameters())
      metas.push_back(TensorMeta{p.name, SafetensorsDTypeOf(type), p.shape});
    return metas;
  }

  void Append(const std::string& name, const at::Tensor& value) {
    const at::Tensor tensor = value.to(type_).cpu().contiguous();
    writer_.Append(name, tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()));
  }

  const PeftMethod& peft_;
  at::ScalarType type_;
  SafetensorsModelWriter writer_;
};

// Runs `write(staging)` on every rank of `world` with `out_dir`'s staging directory: rank 0
// creates it, every rank writes its share, and rank 0 renames it into place once all have.
void WriteStaged(Communicator& world, const fs::path& out_dir, const std::function<void(const fs::path&)>& write) {
  const StagedDirectory staged(out_dir, StagedDirectory::Existing::kRefuse);
  if (world.rank() == 0) staged.Begin();
  world.Barrier(CollectiveTag{"export: staging"});
  write(staged.staging());
  world.Barrier(CollectiveTag{"export: written"});
  if (world.rank() == 0) staged.Commit();
  world.Barrier(CollectiveTag{"export: committed"});
}

FileShare ShareOf(const Communicator& world) { return FileShare{world.rank(), world.size()}; }

// Every rank's copy of every trainable parameter of a PEFT method (small by construction).
std::map<std::string, at::Tensor> GatherTrainable(ZeroEngine& engine) {
  std::map<std::string, at::Tensor> tensors;
  engine.ForEachUnitGathered(
      [&](const UnitLayout& unit, const at::Tensor& full) {
        for (const auto& p : unit.parameters)
          tensors[p.spec.name] = full.narrow(0, p.offset, p.numel).view(p.spec.shape).cpu().clone();
      },
      ZeroEngine::Buffer::kWeights, ZeroEngine::Units::kTrainable);
  return tensors;
}

bool Has(const std::vector<ExportFormat>& formats, ExportFormat format) {
  return std::find(formats.begin(), formats.end(), format) != formats.end();
}

// This process's files of the merged model, the base weights read from the model directory in
// their original precision (each tensor's mapped pages released once appended) with the adapter
// merged; what full fine-tuning trained, from `trained`.
void WriteMergedFromFiles(const std::function<at::Tensor(const ParameterSpec&)>& trained, const PeftMethod& peft,
                          const fs::path& model_dir, const TensorLookup& adapter, const fs::path& staging,
                          ComputeDType dtype, FileShare share) {
  MergedModelFiles files(peft, staging, model_dir, dtype, share);
  std::optional<SafetensorsCheckpoint> base;
  if (!peft.full()) base = SafetensorsCheckpoint::Open(model_dir);
  for (const UnitSpec& unit : peft.Units()) {
    if (!Streamed(peft, unit)) continue;
    for (const auto& p : unit.parameters) {
      if (!files.Writes(p.name)) continue;
      if (unit.trainable) {
        files.AppendUnitParameter(p.name, trained(p), adapter);
        continue;
      }
      files.AppendUnitParameter(p.name, ReadHfTensor(*base, model_dir, p), adapter);
      const auto entry = base->Find(p.name);
      entry->file->Evict(*entry->info);
    }
  }
  files.Finish(adapter);
}

}  // namespace

uint64_t MaxModelFileBytes() { return TestKnobs::FromEnvironment().export_shard_bytes.value_or(kMaxModelFileBytes); }

void ExportModel(ZeroEngine& engine, Communicator& world, const PeftMethod& peft, const fs::path& out_dir,
                 const fs::path& model_dir, ComputeDType dtype, const std::vector<ExportFormat>& formats) {
  const bool hf = Has(formats, ExportFormat::kHf), adapter = Has(formats, ExportFormat::kPeft);
  if (hf) RequireMergeable(peft);
  const auto& units = engine.layout().units;
  std::optional<Quant4Format> quantization;  // the base's 4-bit format, if it is quantized
  for (const UnitLayout& unit : units)
    if (unit.quant4) quantization = unit.quant4;
  std::map<std::string, at::Tensor> trainable;
  if (!peft.full()) trainable = GatherTrainable(engine);
  const TensorLookup lookup = [&](const std::string& name) { return trainable.at(name); };
  WriteStaged(world, out_dir, [&](const fs::path& staging) {
    if (hf && quantization) {
      // Into the original weights, not the 4-bit ones the job trained on (as PEFT's
      // merge_and_unload on a reloaded full-precision base).
      const auto none = [](const ParameterSpec& p) -> at::Tensor {
        Fail(ErrorCode::kInternal, "a quantized base trains no base weight ('{}')", p.name);
      };
      WriteMergedFromFiles(none, peft, model_dir, lookup, staging, dtype, ShareOf(world));
    } else if (hf) {
      MergedModelFiles files(peft, staging, model_dir, dtype, ShareOf(world));
      engine.ForEachUnitGathered(
          [&](const UnitLayout& unit, const at::Tensor& full) {
            for (const auto& p : unit.parameters) {
              if (files.Writes(p.spec.name))
                files.AppendUnitParameter(p.spec.name, full.narrow(0, p.offset, p.numel).view(p.spec.shape), lookup);
            }
          },
          ZeroEngine::Buffer::kWeights, peft.full() ? ZeroEngine::Units::kAll : ZeroEngine::Units::kFrozen);
      files.Finish(lookup);
    }
    if (adapter && world.rank() == 0)
      WritePeftAdapter(staging, peft, model_dir.string(), trainable, dtype, quantization);
  });
}

namespace {

// Parameter `spec` of a checkpoint, fp32, checked against the shape the job's model implies.
at::Tensor ReadCheckpointTensor(const CheckpointReader& reader, const ParameterSpec& spec) {
  const CheckpointReader::Parameter* held = reader.Find(spec.name);
  if (held == nullptr) {
    Fail(ErrorCode::kDataLoss, "{}: the checkpoint holds no parameter '{}', which its job's model trains",
         reader.dir().string(), spec.name);
  }
  if (held->shape != spec.shape) {
    Fail(ErrorCode::kDataLoss, "{}: parameter '{}' has shape [{}] in the checkpoint but its job's model implies [{}]",
         reader.dir().string(), spec.name, fmt::join(held->shape, ", "), fmt::join(spec.shape, ", "));
  }
  at::Tensor value = at::empty(spec.shape, at::kFloat);
  reader.Read(spec.name, value.data_ptr<float>());
  return value;
}

}  // namespace

void ExportCheckpoint(const CheckpointExport& request, Communicator& world) {
  const CheckpointReader reader(request.checkpoint_dir);  // every rank file checked before anything is written
  const JobSpec spec = LoadJobSpec(CheckpointDir(request.checkpoint_dir).Run().JobYaml());
  if (request.format == ExportFormat::kPeft && spec.method.type == MethodType::kFull) {
    Fail(ErrorCode::kInvalidArgument, "--to peft: {} was trained with method 'full'; there is no adapter (use --to hf)",
         request.checkpoint_dir.string());
  }
  ModelConfig config = ModelConfig::Load(spec.model.path);
  // The run's job.yaml records its classes.
  if (spec.model.task != ModelTask::kCausalLm) config.SetHead(spec.model.task, spec.model.labels);
  const PeftMethod peft(config, spec.method);
  if (request.format == ExportFormat::kHf) {
    RequireMergeable(peft);
    const SafetensorsCheckpoint base = SafetensorsCheckpoint::Open(spec.model.path);
    const auto stored = FindPrequantizedWeights(base, spec.model.path);
    if (!stored.empty()) {
      Fail(ErrorCode::kFailedPrecondition,
           "--to hf: {} trained on {}, which holds only 4-bit weights ('{}', ...); the merge needs the original "
           "ones: export --to peft and merge the adapter into the original model",
           request.checkpoint_dir.string(), spec.model.path, stored.begin()->first);
    }
  }
  // A parameter-efficient method's trainable parameters (small): merged into every base weight.
  std::map<std::string, at::Tensor> trainable;
  for (const UnitSpec& unit : peft.Units()) {
    if (!unit.trainable || peft.full()) continue;
    for (const auto& p : unit.parameters) trainable[p.name] = ReadCheckpointTensor(reader, p);
  }
  const TensorLookup lookup = [&](const std::string& name) { return trainable.at(name); };
  WriteStaged(world, request.out_dir, [&](const fs::path& staging) {
    if (request.format == ExportFormat::kHf) {
      const auto trained = [&](const ParameterSpec& p) { return ReadCheckpointTensor(reader, p); };
      WriteMergedFromFiles(trained, peft, spec.model.path, lookup, staging, request.dtype, ShareOf(world));
    } else if (world.rank() == 0) {
      WritePeftAdapter(staging, peft, spec.model.path, trainable, request.dtype,
                       Quant4FormatOf(spec.model.quantization));
    }
  });
  spdlog::info("exported {} (model {}) to {}: {} MiB read from the checkpoint{}", request.checkpoint_dir.string(),
               spec.model.path, request.out_dir.string(), reader.bytes_read() >> 20,
               world.size() > 1 ? fmt::format(" by process {} of {}", world.rank(), world.size()) : "");
}

}  // namespace shardtune
