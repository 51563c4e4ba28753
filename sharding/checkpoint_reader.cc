#include "sharding/checkpoint_reader.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/run_dir.h"
#include "common/safetensors.h"
#include "sharding/checkpoint.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json ParseIndex(const fs::path& path) {
  if (!fs::exists(path)) {
    Fail(ErrorCode::kNotFound, "{}: not a checkpoint (no index.json); expected OUTPUT_DIR/checkpoints/step-N",
         path.parent_path().string());
  }
  json index;
  try {
    index = json::parse(ReadFile(path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", path.string(), e.what());
  }
  // Compared as JSON values: value() would throw on a "format" or "version" of another type.
  if (!index.is_object() || index.find("format") == index.end() || index["format"] != kCheckpointFormatName ||
      index.find("version") == index.end() || index["version"] != kCheckpointFormatVersion) {
    Fail(ErrorCode::kDataLoss, "{}: not a shardtune checkpoint of format version {}", path.string(),
         kCheckpointFormatVersion);
  }
  return index;
}

// The byte offset of the "values" tensor (F32, `elements` of them) in the rank file at `path`.
uint64_t ValuesOffset(const fs::path& path, int64_t elements) {
  const SafetensorsFileHeader file = ReadSafetensorsFileHeader(path);
  const auto values = file.header.tensors.find("values");
  if (values == file.header.tensors.end() || values->second.dtype != DType::kF32 ||
      values->second.numel() != elements) {
    Fail(ErrorCode::kDataLoss, "{}: expected an F32 tensor 'values' of {} elements", path.string(), elements);
  }
  return file.data_offset + values->second.begin;
}

// Counts and offsets in index.json lie in [0, kMaxElements]: far beyond any model (2^50 floats
// is 4 PiB), and small enough that sums of two of them (an offset plus a count) never overflow.
constexpr int64_t kMaxElements = int64_t{1} << 50;

// index.json's integer `key` of `node`, required in [0, kMaxElements].
int64_t Count(const json& node, const char* key, const fs::path& index) {
  const json& field = node.at(key);
  // An integer, not a float (a float beyond int64 would not convert to one).
  const int64_t value = field.is_number_integer() ? field.get<int64_t>() : -1;
  if (value < 0 || value > kMaxElements) {
    Fail(ErrorCode::kDataLoss, "{}: '{}' must be between 0 and {}, got {} in {}", index.string(), key, kMaxElements,
         value, node.dump());
  }
  return value;
}

// A parameter's "shape", whose element count must be its "numel".
std::vector<int64_t> Shape(const json& parameter, int64_t numel, const std::string& name, const fs::path& index) {
  std::vector<int64_t> shape;
  int64_t product = 1;
  for (const json& size : parameter.at("shape")) {
    const int64_t dim = size.is_number_integer() ? size.get<int64_t>() : -1;
    shape.push_back(dim);
    if (dim < 0 || (dim > 0 && product > kMaxElements / dim)) {
      Fail(ErrorCode::kDataLoss, "{}: parameter '{}' has shape dimension {} (expected 0 to {} elements in all)",
           index.string(), name, dim, kMaxElements);
    }
    product *= dim;
  }
  if (product != numel) {
    Fail(ErrorCode::kDataLoss, "{}: parameter '{}' has numel {} but its shape holds {} elements", index.string(), name,
         numel, product);
  }
  return shape;
}

}  // namespace

CheckpointReader::CheckpointReader(fs::path dir) : dir_(std::move(dir)) {
  const fs::path index_path = CheckpointDir(dir_).Index();
  const json index = ParseIndex(index_path);
  try {
    const json& units = index.at("units");
    for (size_t u = 0; u < units.size(); ++u) {
      for (const json& p : units[u].at("parameters")) {
        Parameter parameter{p.at("name").get<std::string>(), {}, Count(p, "numel", index_path)};
        parameter.shape = Shape(p, parameter.numel, parameter.name, index_path);
        located_[parameter.name] = Located{static_cast<int64_t>(u), Count(p, "offset", index_path)};
        parameters_[parameter.name] = std::move(parameter);
      }
    }
    ReadFiles(index);
  } catch (const json::exception& e) {
    Fail(ErrorCode::kDataLoss, "{}: {}", index_path.string(), e.what());
  }
}

void CheckpointReader::ReadFiles(const json& index) {
  for (const json& entry : index.at("files")) {
    const std::string name = entry.at("file").get<std::string>();
    if (name.find('/') != std::string::npos || name == "..") {
      Fail(ErrorCode::kDataLoss, "{}: file '{}' must be a name in the checkpoint directory",
           CheckpointDir(dir_).Index().string(), name);
    }
    const fs::path path = dir_ / name;
    const fs::path index_path = CheckpointDir(dir_).Index();
    const int64_t elements = Count(entry, "elements", index_path);
    const uint64_t values = ValuesOffset(path, elements);
    for (const json& range : entry.at("ranges")) {
      const int64_t begin = Count(range, "begin", index_path), size = Count(range, "size", index_path);
      const int64_t local = Count(range, "local_offset", index_path);
      if (local + size > elements) {
        Fail(ErrorCode::kDataLoss, "{}: range {} of {} lies outside its {} elements",
             CheckpointDir(dir_).Index().string(), range.dump(), name, elements);
      }
      pieces_[range.at("unit").get<int64_t>()].push_back(
          Piece{files_.size(), begin, size, values + static_cast<uint64_t>(local) * sizeof(float)});
    }
    files_.push_back(path);
  }
}

const CheckpointReader::Parameter* CheckpointReader::Find(const std::string& name) const {
  const auto it = parameters_.find(name);
  return it == parameters_.end() ? nullptr : &it->second;
}

void CheckpointReader::Read(const std::string& name, float* out) const {
  const Parameter* parameter = Find(name);
  if (parameter == nullptr)
    Fail(ErrorCode::kNotFound, "{}: the checkpoint holds no parameter '{}'", dir_.string(), name);
  const Located& where = located_.at(name);
  const int64_t first = where.offset, last = where.offset + parameter->numel;
  int64_t covered = 0;
  const auto pieces = pieces_.find(where.unit);
  if (pieces != pieces_.end()) {
    for (const Piece& piece : pieces->second) {
      // The overlap of the parameter's elements with what this file holds of its unit.
      const int64_t begin = std::max(first, piece.begin), end = std::min(last, piece.begin + piece.size);
      if (begin >= end) continue;
      const auto bytes = static_cast<size_t>(end - begin) * sizeof(float);
      ReadFileRange(files_[piece.file], piece.file_offset + static_cast<uint64_t>(begin - piece.begin) * sizeof(float),
                    out + (begin - first), bytes);
      bytes_read_ += bytes;
      covered += end - begin;
    }
  }
  if (covered != parameter->numel) {
    Fail(ErrorCode::kDataLoss, "{}: the rank files cover {} of the {} elements of '{}'",
         CheckpointDir(dir_).Index().string(), covered, parameter->numel, name);
  }
}

}  // namespace shardtune
