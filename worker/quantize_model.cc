#include "worker/quantize_model.h"

#include <spdlog/spdlog.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/model_config.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "sharding/model_layout.h"
#include "sharding/prequantized.h"
#include "worker/models/hf_io.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

// The dtype a weight of the checkpoint was stored in, as a compute dtype (torch's name for it
// goes into the quant_state and config.json).
ComputeDType ComputeDTypeOf(DType dtype) {
  return dtype == DType::kBF16 ? ComputeDType::kBf16 : dtype == DType::kF16 ? ComputeDType::kFp16 : ComputeDType::kFp32;
}

}  // namespace

void QuantizeModel(const fs::path& model_dir, const fs::path& out_dir, const Quant4Format& format) {
  const ModelConfig config = ModelConfig::Load(model_dir);
  if (fs::exists(out_dir))
    Fail(ErrorCode::kInvalidArgument, "--out {}: exists; give a new directory", out_dir.string());
  if (DeclaredQuantization(model_dir)) {
    Fail(ErrorCode::kInvalidArgument, "{}: the model is 4-bit already (config.json has a quantization_config)",
         model_dir.string());
  }
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(model_dir);
  std::vector<UnitSpec> units = ModelUnits(config);
  for (UnitSpec& unit : units) unit.trainable = false;  // the base QLoRA would hold 4-bit
  const std::set<std::string> quantized = QuantizedWeightNames(units);
  std::map<std::string, ParameterSpec> specs;
  for (const ParameterSpec& p : ModelParameterSpecs(config)) specs[p.name] = p;
  for (const std::string& name : quantized) {  // before anything is read
    if (!checkpoint.Find(name)) {
      Fail(ErrorCode::kNotFound, "{}: tensor '{}' is missing from the checkpoint", model_dir.string(), name);
    }
  }

  std::vector<TensorBytes> tensors;
  std::vector<PrequantizedTensors> held;     // the quantized weights' bytes, until written
  ComputeDType dtype = ComputeDType::kFp32;  // the quantized weights' original dtype
  int64_t quantized_elements = 0;
  for (const std::string& name : checkpoint.Names()) {
    const SafetensorsCheckpoint::Entry entry = *checkpoint.Find(name);
    if (!quantized.count(name)) {  // as it is: the bytes of the file's mapping
      tensors.push_back(TensorBytes{name, entry.info->dtype, entry.info->shape, entry.file->Data(*entry.info),
                                    static_cast<size_t>(entry.info->end - entry.info->begin)});
      continue;
    }
    const ParameterSpec& spec = specs.at(name);
    const at::Tensor values = ReadHfTensor(checkpoint, model_dir, spec).contiguous();
    dtype = ComputeDTypeOf(entry.info->dtype);
    held.push_back(PrequantizedTensorsOf(name, spec.shape, TorchDTypeName(dtype),
                                         Quantize4(values.data_ptr<float>(), values.numel(), format)));
    tensors.insert(tensors.end(), held.back().tensors.begin(), held.back().tensors.end());
    quantized_elements += values.numel();
  }

  const StagedDirectory out(out_dir, StagedDirectory::Existing::kRefuse);
  out.Begin();
  WriteHfCompanions(out.staging(), model_dir, dtype);
  nlohmann::json written = nlohmann::json::parse(ReadFile(out.staging() / "config.json"));
  written["quantization_config"] = nlohmann::json::parse(QuantizationConfigJson(format, TorchDTypeName(dtype)));
  WriteFileAtomic(out.staging() / "config.json", written.dump(2) + "\n");
  WriteSafetensorsModel(out.staging(), tensors);
  out.Commit();
  spdlog::info("wrote {}: {} weights ({} parameters) of {} stored {}", out_dir.string(), held.size(),
               quantized_elements, model_dir.string(), Quant4FormatText(format));
}

}  // namespace shardtune
