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
  } catch (const json::parse_error& e) {
    Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", path.string(), e.what());
  }
  if (!index.is_object() || index.value("format", "") != kCheckpointFormatName ||
      index.value("version", 0) != kCheckpointFormatVersion) {
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

}  // namespace

CheckpointReader::CheckpointReader(fs::path dir) : dir_(std::move(dir)) {
  const fs::path index_path = CheckpointDir(dir_).Index();
  const json index = ParseIndex(index_path);
  try {
    const json& units = index.at("units");
    for (size_t u = 0; u < units.size(); ++u) {
      for (const json& p : units[u].at("parameters")) {
        Parameter parameter{p.at("name").get<std::string>(), p.at("shape").get<std::vector<int64_t>>(),
                            p.at("numel").get<int64_t>()};
        located_[parameter.name] = Located{static_cast<int64_t>(u), p.at("offset").get<int64_t>()};
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
    const int64_t elements = entry.at("elements").get<int64_t>();
    const uint64_t values = ValuesOffset(path, elements);
    for (const json& range : entry.at("ranges")) {
      const int64_t begin = range.at("begin").get<int64_t>(), size = range.at("size").get<int64_t>();
      const int64_t local = range.at("local_offset").get<int64_t>();
      if (begin < 0 || local < 0 || size < 0 || local + size > elements) {
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
