#include "sharding/prequantized.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "sharding/parameter_layout.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kQuantState = ".quant_state.bitsandbytes__";

// The companions of weight W that bitsandbytes' QuantState stores beside it.
constexpr const char* kCompanions[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};

std::string FileOf(const SafetensorsCheckpoint::Entry& entry) { return entry.file->path().string(); }

// A field of a quant_state's JSON, of the type `T`, or an Error naming the tensor and the field.
template <typename T>
T Field(const json& state, const char* key, const SafetensorsCheckpoint::Entry& entry, const char* expected) {
  const auto it = state.find(key);
  const bool ok = it != state.end() && (std::is_same_v<T, std::string> ? it->is_string()
                                        : std::is_floating_point_v<T>  ? it->is_number()
                                                                       : it->is_number_integer());
  if (!ok) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}': field '{}' must be {}{}", FileOf(entry), entry.info->name, key,
         expected, it == state.end() ? " (it is missing)" : fmt::format(", not {}", it->dump()));
  }
  return it->get<T>();
}

// The tensor `name` of a 4-bit weight: present, of `dtype` and `numel` elements.
SafetensorsCheckpoint::Entry Companion(const SafetensorsCheckpoint& checkpoint, const fs::path& dir,
                                       const std::string& name, const std::string& state, DType dtype, int64_t numel) {
  const auto entry = checkpoint.Find(name);
  if (!entry) {
    Fail(ErrorCode::kNotFound, "{}: tensor '{}' is missing: its weight is stored 4-bit ('{}'), which needs it",
         dir.string(), name, state);
  }
  if (entry->info->dtype != dtype || entry->info->numel() != numel) {
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}' is {} [{}]; its quant_state '{}' implies {} of {} elements",
         FileOf(*entry), name, DTypeName(entry->info->dtype), fmt::join(entry->info->shape, ", "), state,
         DTypeName(dtype), numel);
  }
  return *entry;
}

// A map the checkpoint stores (quant_map, nested_quant_map) equals ours: bitsandbytes computes
// them in fp32, so a value may differ from the exact one in its last bits.
void CheckMap(const SafetensorsCheckpoint::Entry& entry, const float* expected, int64_t size) {
  std::vector<float> stored(size);
  std::memcpy(stored.data(), entry.file->Data(*entry.info), size * sizeof(float));
  for (int64_t k = 0; k < size; ++k) {
    if (std::fabs(stored[k] - expected[k]) > 1e-6f * std::max(std::fabs(expected[k]), 1e-3f)) {
      Fail(ErrorCode::kDataLoss,
           "{}: tensor '{}': entry {} is {}, not bitsandbytes' {} (another code map is not supported)", FileOf(entry),
           entry.info->name, k, stored[k], expected[k]);
    }
  }
}

PrequantizedWeight ReadWeight(const SafetensorsCheckpoint& checkpoint, const fs::path& dir, const std::string& weight,
                              const std::string& type_name, const SafetensorsCheckpoint::Entry& state_entry) {
  const std::string& state_name = state_entry.info->name;
  if (state_entry.info->dtype != DType::kU8) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}' is {}; it holds the UTF-8 bytes of a JSON object (U8)",
         FileOf(state_entry), state_name, DTypeName(state_entry.info->dtype));
  }
  const auto* bytes = reinterpret_cast<const char*>(state_entry.file->Data(*state_entry.info));
  const json state = json::parse(bytes, bytes + state_entry.info->numel(), nullptr, /*allow_exceptions=*/false);
  if (!state.is_object()) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}' is not a JSON object", FileOf(state_entry), state_name);
  }
  PrequantizedWeight w;
  w.name = weight;
  const auto type = ParseQuant4Type(type_name);
  if (!type || Field<std::string>(state, "quant_type", state_entry, "\"nf4\" or \"fp4\"") != type_name) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}': quant_type must be the one its name says ({})",
         FileOf(state_entry), state_name, type_name);
  }
  w.format.type = *type;
  w.format.block_size = Field<int64_t>(state, "blocksize", state_entry, "a block size");
  if (std::find(kQuant4BlockSizes.begin(), kQuant4BlockSizes.end(), w.format.block_size) == kQuant4BlockSizes.end()) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}': blocksize {} is not one of bitsandbytes' ({})",
         FileOf(state_entry), state_name, w.format.block_size, fmt::join(kQuant4BlockSizes, ", "));
  }
  const auto shape = state.find("shape");
  if (shape == state.end() || !shape->is_array() || shape->empty() ||
      !std::all_of(shape->begin(), shape->end(),
                   [](const json& d) { return d.is_number_integer() && d.get<int64_t>() > 0; })) {
    Fail(ErrorCode::kDataLoss, "{}: quant_state '{}': field 'shape' must be the weight's dimensions",
         FileOf(state_entry), state_name);
  }
  w.shape = shape->get<std::vector<int64_t>>();
  w.format.double_quant = state.contains("nested_offset");
  if (w.format.double_quant) {
    w.offset = static_cast<float>(Field<double>(state, "nested_offset", state_entry, "a number"));
    if (Field<int64_t>(state, "nested_blocksize", state_entry, "256") != kNestedBlockSize) {
      Fail(ErrorCode::kDataLoss, "{}: quant_state '{}': nested_blocksize must be {}", FileOf(state_entry), state_name,
           kNestedBlockSize);
    }
  }
  const int64_t n = w.numel(), blocks = (n + w.format.block_size - 1) / w.format.block_size;
  w.packed = Companion(checkpoint, dir, weight, state_name, DType::kU8, (n + 1) / 2);
  w.absmax = Companion(checkpoint, dir, weight + ".absmax", state_name,
                       w.format.double_quant ? DType::kU8 : DType::kF32, blocks);
  CheckMap(Companion(checkpoint, dir, weight + ".quant_map", state_name, DType::kF32, 16),
           Quant4CodeValues(w.format.type).data(), 16);
  if (w.format.double_quant) {
    w.nested_absmax = Companion(checkpoint, dir, weight + ".nested_absmax", state_name, DType::kF32,
                                (blocks + kNestedBlockSize - 1) / kNestedBlockSize);
    CheckMap(Companion(checkpoint, dir, weight + ".nested_quant_map", state_name, DType::kF32, 256),
             DynamicQuantMap().data(), 256);
  }
  w.tensor_names = {weight, weight + ".absmax", weight + ".quant_map", state_name};
  if (w.format.double_quant) {
    w.tensor_names.push_back(weight + ".nested_absmax");
    w.tensor_names.push_back(weight + ".nested_quant_map");
  }
  return w;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string Quant4FormatText(const Quant4Format& format) {
  return fmt::format("{} (block size {}, {})", Quant4TypeName(format.type), format.block_size,
                     format.double_quant ? "double quantization" : "fp32 absmax");
}

int64_t PrequantizedWeight::numel() const { return NumelOf(shape); }

std::vector<SafetensorsCheckpoint::Entry> PrequantizedWeight::entries() const {
  std::vector<SafetensorsCheckpoint::Entry> all = {packed, absmax};
  if (nested_absmax) all.push_back(*nested_absmax);
  return all;
}

std::map<std::string, PrequantizedWeight> FindPrequantizedWeights(const SafetensorsCheckpoint& checkpoint,
                                                                  const fs::path& dir) {
  std::map<std::string, PrequantizedWeight> found;
  const std::vector<std::string> names = checkpoint.Names();
  for (const std::string& name : names) {
    const size_t at = name.find(kQuantState);
    if (at == std::string::npos) continue;
    const std::string weight = name.substr(0, at);
    if (found.count(weight)) {
      Fail(ErrorCode::kDataLoss, "{}: '{}' has two quant_state tensors", dir.string(), weight);
    }
    found.emplace(weight,
                  ReadWeight(checkpoint, dir, weight, name.substr(at + kQuantState.size()), *checkpoint.Find(name)));
  }
  // A companion without its weight's quant_state: the state that says how to read it is missing.
  for (const std::string& name : names) {
    for (const char* suffix : kCompanions) {
      if (!EndsWith(name, suffix)) continue;
      const std::string weight = name.substr(0, name.size() - std::strlen(suffix));
      if (checkpoint.Find(weight) && !found.count(weight)) {
        Fail(ErrorCode::kNotFound,
             "{}: tensor '{}{}nf4' (or __fp4) is missing: '{}' is stored 4-bit ('{}' is there) but without the "
             "quant_state that describes it",
             dir.string(), weight, kQuantState, weight, name);
      }
    }
  }
  return found;
}

void CheckPrequantizedShape(const PrequantizedWeight& weight, const std::vector<int64_t>& shape) {
  if (weight.shape == shape) return;
  Fail(ErrorCode::kInvalidArgument,
       "{}: tensor '{}' is stored 4-bit with shape [{}] (its quant_state) but config.json implies [{}]",
       FileOf(weight.packed), weight.name, fmt::join(weight.shape, ", "), fmt::join(shape, ", "));
}

std::optional<PrequantizedWeight> FindPrequantizedWeight(const SafetensorsCheckpoint& checkpoint, const fs::path& dir,
                                                         const std::string& name) {
  for (Quant4Type type : {Quant4Type::kNf4, Quant4Type::kFp4}) {
    const std::string type_name(Quant4TypeName(type));
    if (const auto state = checkpoint.Find(name + std::string(kQuantState) + type_name))
      return ReadWeight(checkpoint, dir, name, type_name, *state);
  }
  return std::nullopt;
}

std::vector<float> DequantizePrequantized(const PrequantizedWeight& weight) {
  const int64_t per_record = weight.format.record_elements();
  const int64_t records = (weight.numel() + per_record - 1) / per_record;
  std::vector<uint8_t> bytes(records * weight.format.record_bytes());
  ReadPrequantizedRecords(
      weight, 0, records,
      [](const SafetensorsCheckpoint::Entry& entry, uint64_t offset, void* out, uint64_t size) {
        std::memcpy(out, entry.file->Data(*entry.info) + offset, size);
      },
      bytes.data());
  std::vector<float> values(weight.numel());
  DequantizeRecords(bytes.data(), weight.numel(), weight.format, values.data());
  return values;
}

void ReadPrequantizedRecords(const PrequantizedWeight& weight, int64_t first, int64_t count,
                             const TensorByteReader& read, uint8_t* records) {
  const Quant4Format& f = weight.format;
  const int64_t per_record = f.record_elements();
  const int64_t begin = first * per_record, end = std::min(weight.numel(), (first + count) * per_record);
  ST_CHECK(first >= 0 && count > 0 && begin < end && (end - begin + per_record - 1) / per_record == count,
           "records [{}, {}) of '{}' ({} elements)", first, first + count, weight.name, weight.numel());
  // The records' part of bitsandbytes' tensors is bitsandbytes' layout of those elements alone.
  Quant4Tensor part;
  part.format = f;
  part.numel = end - begin;
  part.packed.resize((part.numel + 1) / 2);
  read(weight.packed, begin / 2, part.packed.data(), part.packed.size());
  const int64_t blocks = part.blocks(), first_block = first * kNestedBlockSize;
  if (f.double_quant) {
    part.quantized_absmax.resize(blocks);
    read(weight.absmax, first_block, part.quantized_absmax.data(), blocks);
    part.nested_absmax.resize(count);
    read(*weight.nested_absmax, first * sizeof(float), part.nested_absmax.data(), count * sizeof(float));
    part.offset = weight.offset;
  } else {
    part.absmax.resize(blocks);
    read(weight.absmax, first_block * sizeof(float), part.absmax.data(), blocks * sizeof(float));
  }
  const std::vector<uint8_t> bytes = RecordsOf(part);
  std::memcpy(records, bytes.data(), bytes.size());
}

PrequantizedTensors PrequantizedTensorsOf(const std::string& name, const std::vector<int64_t>& shape,
                                          const std::string& torch_dtype, const Quant4Tensor& tensor) {
  const Quant4Format& f = tensor.format;
  PrequantizedTensors out;
  out.storage.reserve(6);
  auto add = [&](const std::string& tensor_name, DType dtype, std::vector<int64_t> dims, std::vector<uint8_t> bytes) {
    out.storage.push_back(std::move(bytes));
    const std::vector<uint8_t>& held = out.storage.back();
    out.tensors.push_back(TensorBytes{tensor_name, dtype, std::move(dims), held.data(), held.size()});
  };
  auto floats = [](const float* values, size_t count) {
    std::vector<uint8_t> bytes(count * sizeof(float));
    std::memcpy(bytes.data(), values, bytes.size());
    return bytes;
  };
  const auto packed = static_cast<int64_t>(tensor.packed.size());
  add(name, DType::kU8, {packed, 1}, tensor.packed);
  if (f.double_quant) {
    add(name + ".absmax", DType::kU8, {tensor.blocks()}, tensor.quantized_absmax);
    add(name + ".nested_absmax", DType::kF32, {static_cast<int64_t>(tensor.nested_absmax.size())},
        floats(tensor.nested_absmax.data(), tensor.nested_absmax.size()));
    add(name + ".nested_quant_map", DType::kF32, {256}, floats(DynamicQuantMap().data(), 256));
  } else {
    add(name + ".absmax", DType::kF32, {tensor.blocks()}, floats(tensor.absmax.data(), tensor.absmax.size()));
  }
  add(name + ".quant_map", DType::kF32, {16}, floats(Quant4CodeValues(f.type).data(), 16));
  // QuantState.as_dict(packed=True)'s non-tensor fields, in its order.
  json state = {
      {"quant_type", Quant4TypeName(f.type)}, {"blocksize", f.block_size}, {"dtype", torch_dtype}, {"shape", shape}};
  if (f.double_quant) {
    state["nested_blocksize"] = kNestedBlockSize;
    state["nested_dtype"] = "float32";
    state["nested_offset"] = static_cast<double>(tensor.offset);
  }
  const std::string text = state.dump();
  add(name + std::string(kQuantState) + std::string(Quant4TypeName(f.type)), DType::kU8,
      {static_cast<int64_t>(text.size())}, std::vector<uint8_t>(text.begin(), text.end()));
  return out;
}

std::string QuantizationConfigJson(const Quant4Format& format, const std::string& compute_dtype) {
  // BitsAndBytesConfig.to_dict() for load_in_4bit.
  return json{{"_load_in_4bit", true},
              {"_load_in_8bit", false},
              {"bnb_4bit_compute_dtype", compute_dtype},
              {"bnb_4bit_quant_storage", "uint8"},
              {"bnb_4bit_quant_type", Quant4TypeName(format.type)},
              {"bnb_4bit_use_double_quant", format.double_quant},
              {"llm_int8_enable_fp32_cpu_offload", false},
              {"llm_int8_has_fp16_weight", false},
              {"llm_int8_skip_modules", nullptr},
              {"llm_int8_threshold", 6.0},
              {"load_in_4bit", true},
              {"load_in_8bit", false},
              {"quant_method", "bitsandbytes"}}
      .dump();
}

std::optional<Quant4Format> DeclaredQuantization(const fs::path& model_dir) {
  const fs::path path = model_dir / "config.json";
  const json config = json::parse(ReadFile(path), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("quantization_config")) return std::nullopt;
  const json& q = config["quantization_config"];
  if (!q.is_object()) {
    Fail(ErrorCode::kDataLoss, "{}: quantization_config must be an object, not {}", path.string(), q.dump());
  }
  auto text = [&](const char* key) { return q.contains(key) && q[key].is_string() ? q[key].get<std::string>() : ""; };
  auto flag = [&](const char* key) { return q.contains(key) && q[key].is_boolean() && q[key].get<bool>(); };
  const std::string method = text("quant_method");
  if (method != "bitsandbytes" || !(flag("load_in_4bit") || flag("_load_in_4bit"))) {
    Fail(ErrorCode::kUnimplemented,
         "{}: quantization_config is {}; shardtune reads bitsandbytes 4-bit checkpoints (quant_method bitsandbytes, "
         "load_in_4bit true) and otherwise the original weights",
         path.string(), q.dump());
  }
  if (const std::string storage = text("bnb_4bit_quant_storage"); !storage.empty() && storage != "uint8") {
    Fail(ErrorCode::kUnimplemented, "{}: quantization_config.bnb_4bit_quant_storage is '{}'; only uint8 is supported",
         path.string(), storage);
  }
  const std::string type = text("bnb_4bit_quant_type");
  const auto parsed = ParseQuant4Type(type.empty() ? "fp4" : type);  // transformers' default is fp4
  if (!parsed) {
    Fail(ErrorCode::kDataLoss, "{}: quantization_config.bnb_4bit_quant_type is '{}'; expected nf4 or fp4",
         path.string(), type);
  }
  return Quant4Format{*parsed, 64, flag("bnb_4bit_use_double_quant")};
}

QuantizationSpec QuantizationSpecOf(const Quant4Format& format) {
  QuantizationSpec q;
  q.type = format.type == Quant4Type::kNf4 ? QuantizationType::kNf4 : QuantizationType::kFp4;
  q.block_size = format.block_size;
  q.double_quant = format.double_quant;
  return q;
}

QuantizationSpec QuantizationOfJob(const JobSpec& spec) {
  if (spec.model.quantization.type != QuantizationType::kNone || spec.method.type == MethodType::kFull)
    return spec.model.quantization;
  std::optional<Quant4Format> format = DeclaredQuantization(spec.model.path);
  if (!format) return spec.model.quantization;
  // The block size is the tensors' (config.json does not say it).
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(spec.model.path);
  const auto weights = FindPrequantizedWeights(checkpoint, spec.model.path);
  return QuantizationSpecOf(weights.empty() ? *format : weights.begin()->second.format);
}

}  // namespace shardtune
