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

const char* TorchDTypeOf(DType dtype) {
  return dtype == DType::kBF16 ? "bfloat16" : dtype == DType::kF16 ? "float16" : "float32";
}

}  // namespace

void QuantizeModel(const fs::path& model_dir, const fs::path& out_dir, const Quant4Format& format) {
  const ModelConfig config = ModelConfig::Load(model_dir);
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

  std::vector<TensorBytes> tensors;
  std::vector<PrequantizedTensors> held;  // the quantized weights' bytes, until written
  std::optional<DType> weight_dtype;
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
    held.push_back(PrequantizedTensorsOf(name, spec.shape, TorchDTypeOf(entry.info->dtype),
                                         Quantize4(values.data_ptr<float>(), values.numel(), format)));
    tensors.insert(tensors.end(), held.back().tensors.begin(), held.back().tensors.end());
    weight_dtype = entry.info->dtype;
    quantized_elements += values.numel();
  }
  for (const std::string& name : quantized) {
    if (!checkpoint.Find(name)) {
      Fail(ErrorCode::kNotFound, "{}: tensor '{}' is missing from the checkpoint", model_dir.string(), name);
    }
  }

  const StagedDirectory out(out_dir, StagedDirectory::Existing::kRefuse);
  out.Begin();
  const ComputeDType dtype = weight_dtype == DType::kBF16  ? ComputeDType::kBf16
                             : weight_dtype == DType::kF16 ? ComputeDType::kFp16
                                                           : ComputeDType::kFp32;
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
