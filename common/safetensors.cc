#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/storage_roots.h"
#include "common/utf8.h"

namespace shardtune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},          {DType::kI8, "I8", 1},          {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},   {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},      {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},   {DType::kF32, "F32", 4},        {DType::kF64, "F64", 8},        {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},   {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

TensorInfo ParseTensorEntry(const std::string& name, const json& entry, const std::string& where) {
  if (!entry.is_object())
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': expected an object, got {}", where, name, entry.dump());
  for (const auto& [key, _] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}': unknown field '{}' (expected dtype, shape, data_offsets)", where,
           name, key);
    }
  }
  TensorInfo info;
  info.name = name;
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string())
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': missing string 'dtype'", where, name);
  const auto parsed = ParseDType(dtype->get<std::string>());
  if (!parsed)
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': unknown dtype '{}'", where, name, dtype->get<std::string>());
  info.dtype = *parsed;

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array())
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': missing array 'shape'", where, name);
  for (const auto& dim : *shape) {
    // int64 as LibTorch's sizes are (a larger one would read back negative).
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      Fail(ErrorCode::kDataLoss,
           "{}: tensor '{}': shape {} has a dimension that is not a non-negative integer below 2^63", where, name,
           shape->dump());
    info.shape.push_back(dim.get<int64_t>());
  }

  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': 'data_offsets' must be [begin, end] with non-negative integers", where,
         name);
  }
  info.begin = (*offsets)[0].get<uint64_t>();
  info.end = (*offsets)[1].get<uint64_t>();
  if (info.end < info.begin)
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", where, name, info.begin,
         info.end);

  // numel x itemsize, guarding against overflow from absurd shapes: a product past 2^64 bytes
  // (no file is that large) is refused before the next factor could wrap 128 bits, so that
  // numel() of an accepted tensor fits int64.
  unsigned __int128 bytes = DTypeSize(info.dtype);
  constexpr unsigned __int128 kMaxBytes = static_cast<unsigned __int128>(1) << 64;
  for (int64_t dim : info.shape) {
    bytes *= static_cast<uint64_t>(dim);
    if (bytes > kMaxBytes)
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}': shape {} holds more than 2^64 bytes", where, name, shape->dump());
  }
  if (bytes != info.end - info.begin) {
    Fail(ErrorCode::kDataLoss, "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}",
         where, name, shape->dump(), DTypeName(info.dtype), static_cast<uint64_t>(bytes), info.begin, info.end,
         info.end - info.begin);
  }
  return info;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry.size;
  return 0;
}

std::string_view DTypeName(DType dtype) {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry.name;
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& entry : kDTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

SafetensorsHeader ParseSafetensorsHeader(std::string_view text, uint64_t data_size, const std::string& where) {
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    Fail(ErrorCode::kDataLoss, "{}: header is not valid UTF-8 (byte {} of the header)", where, bad);
  }
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Fail(ErrorCode::kDataLoss, "{}: header is not valid JSON: {}", where, e.what());
  }
  if (!root.is_object())
    Fail(ErrorCode::kDataLoss, "{}: header must be a JSON object, got {}", where, root.type_name());

  SafetensorsHeader header;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) Fail(ErrorCode::kDataLoss, "{}: __metadata__ must be an object of strings", where);
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          Fail(ErrorCode::kDataLoss, "{}: __metadata__ '{}' must be a string, got {}", where, key, value.dump());
        header.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    header.tensors.emplace(name, ParseTensorEntry(name, entry, where));
  }

  // The data section must be covered exactly: sorted by offset, each tensor starts where the
  // previous one ended, the first at 0, the last at the end of the file.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [_, info] : header.tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* info : by_offset) {
    if (info->end > data_size) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}': data_offsets [{}, {}] run past the data section of {} bytes", where,
           info->name, info->begin, info->end, data_size);
    }
    if (info->begin < expected) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}' at [{}, {}] overlaps tensor '{}' ending at {}", where, info->name,
           info->begin, info->end, previous->name, expected);
    }
    if (info->begin > expected) {
      Fail(ErrorCode::kDataLoss, "{}: gap of {} bytes before tensor '{}' at offset {}", where, info->begin - expected,
           info->name, info->begin);
    }
    expected = info->end;
    previous = info;
  }
  if (expected != data_size) {
    Fail(ErrorCode::kDataLoss,
         "{}: {} trailing bytes after the last tensor (data section is {} bytes, tensors cover {})", where,
         data_size - expected, data_size, expected);
  }
  return header;
}

namespace {

// The header length a file of `file_size` bytes declares in its first 8 bytes (little-endian),
// checked against the limit and the file's size.
uint64_t CheckedHeaderLength(const std::byte* first8, uint64_t file_size, const std::string& where) {
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(first8[i]);
  if (header_size > kMaxSafetensorsHeaderBytes) {
    Fail(ErrorCode::kDataLoss, "{}: header length {} exceeds the limit of {} bytes", where, header_size,
         kMaxSafetensorsHeaderBytes);
  }
  if (header_size > file_size - 8) {
    Fail(ErrorCode::kDataLoss, "{}: header length {} runs past the end of the {}-byte file", where, header_size,
         file_size);
  }
  return header_size;
}

// Opens `path` for reading and returns its descriptor and size (at least the 8 bytes of a
// header length).
int OpenForReading(const fs::path& path, uint64_t& file_size) {
  const std::string where = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) Fail(ErrorCode::kNotFound, "{}: no such file", where);
  ST_SYSCALL_CHECK(fd, where);
  struct stat st {};
  try {
    RequireOpenedWithinGrantedRoots(fd, where);  // the storage sandbox, on the file really opened
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    FailErrno("fstat", where);
  }
  file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    Fail(ErrorCode::kDataLoss, "{}: file is {} bytes; a safetensors file starts with an 8-byte header length", where,
         file_size);
  }
  return fd;
}

// Reads exactly `size` bytes at `offset`, or throws naming the file.
void PreadExactly(int fd, void* out, size_t size, uint64_t offset, const std::string& where) {
  auto* bytes = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd, bytes, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) FailErrno("pread", where);
    if (n == 0) Fail(ErrorCode::kDataLoss, "{}: ends before byte {}", where, offset);
    bytes += n, size -= static_cast<size_t>(n), offset += static_cast<uint64_t>(n);
  }
}

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::Open(const fs::path& path) {
  const std::string where = path.string();
  uint64_t file_size = 0;
  const int fd = OpenForReading(path, file_size);
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) FailErrno("mmap", where);

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = mapping;
  file->mapping_size_ = file_size;
  const auto* bytes = static_cast<const std::byte*>(mapping);
  const uint64_t header_size = CheckedHeaderLength(bytes, file_size, where);
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_size);
  file->header_ = ParseSafetensorsHeader(text, file_size - 8 - header_size, where);
  file->data_ = bytes + 8 + header_size;
  file->data_offset_ = 8 + header_size;
  return file;
}

SafetensorsFileHeader ReadSafetensorsFileHeader(const fs::path& path) {
  const std::string where = path.string();
  uint64_t file_size = 0;
  const int fd = OpenForReading(path, file_size);
  std::string text;
  try {
    std::byte first8[8];
    PreadExactly(fd, first8, 8, 0, where);
    text.resize(CheckedHeaderLength(first8, file_size, where));
    PreadExactly(fd, text.data(), text.size(), 8, where);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  const uint64_t data_offset = 8 + text.size();
  return SafetensorsFileHeader{ParseSafetensorsHeader(text, file_size - data_offset, where), data_offset};
}

void ReadFileRange(const fs::path& path, uint64_t offset, void* out, size_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) Fail(ErrorCode::kNotFound, "{}: no such file", path.string());
  ST_SYSCALL_CHECK(fd, path.string());
  try {
    RequireOpenedWithinGrantedRoots(fd, path.string());
    PreadExactly(fd, out, size, offset, path.string());
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

void SafetensorsFile::Evict(const TensorInfo& info) const {
  // Whole pages inside the tensor only: a page it shares with a neighbour may still be in use.
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(data_ + info.begin) + page - 1) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(data_ + info.end) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  const auto it = header_.tensors.find(name);
  return it == header_.tensors.end() ? nullptr : &it->second;
}

SafetensorsCheckpoint SafetensorsCheckpoint::Open(const fs::path& dir) {
  SafetensorsCheckpoint checkpoint;
  const fs::path single = dir / "model.safetensors";
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json index;
    try {
      index = json::parse(ReadFile(index_path));
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
      Fail(ErrorCode::kDataLoss, "{}: not valid JSON: {}", index_path.string(), e.what());
    }
    const auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object()) {
      Fail(ErrorCode::kDataLoss, "{}: expected an object with a 'weight_map' object", index_path.string());
    }
    std::map<std::string, std::shared_ptr<SafetensorsFile>> by_file;
    for (const auto& [name, file_name] : map->items()) {
      if (!file_name.is_string())
        Fail(ErrorCode::kDataLoss, "{}: weight_map['{}'] must be a file name", index_path.string(), name);
      const auto shard_name = file_name.get<std::string>();
      if (shard_name.find('/') != std::string::npos || shard_name == "..") {
        Fail(ErrorCode::kDataLoss, "{}: weight_map['{}'] = '{}' must be a file name in the same directory",
             index_path.string(), name, shard_name);
      }
      auto& shard = by_file[shard_name];
      if (!shard) {
        shard = SafetensorsFile::Open(dir / shard_name);
        checkpoint.files_.push_back(shard);
      }
      const TensorInfo* info = shard->Find(name);
      if (info == nullptr) {
        Fail(ErrorCode::kDataLoss, "{}: weight_map puts '{}' in {}, which does not contain it", index_path.string(),
             name, shard_name);
      }
      checkpoint.entries_[name] = Entry{shard.get(), info};
    }
    return checkpoint;
  }
  if (!fs::exists(single)) {
    Fail(ErrorCode::kNotFound, "{}: neither model.safetensors nor model.safetensors.index.json is there", dir.string());
  }
  std::shared_ptr<SafetensorsFile> file = SafetensorsFile::Open(single);
  for (const auto& [name, info] : file->tensors()) checkpoint.entries_[name] = Entry{file.get(), &info};
  checkpoint.files_.push_back(std::move(file));
  return checkpoint;
}

std::optional<SafetensorsCheckpoint::Entry> SafetensorsCheckpoint::Find(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, _] : entries_) names.push_back(name);
  return names;
}

uint64_t TensorMeta::nbytes() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t dim : shape) n *= static_cast<uint64_t>(dim);
  return n;
}

namespace {

// The 8-byte length and the JSON header, padded with spaces so the data starts 8-byte aligned.
std::string EncodeHeader(const std::vector<TensorMeta>& tensors, const std::map<std::string, std::string>& metadata,
                         const std::string& where) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const auto& tensor : tensors) {
    if (!names.insert(tensor.name).second)
      Fail(ErrorCode::kInvalidArgument, "{}: tensor '{}' given twice", where, tensor.name);
    header[tensor.name] = {{"dtype", DTypeName(tensor.dtype)},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + tensor.nbytes()}}};
    offset += tensor.nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string encoded(8, '\0');
  for (int i = 0; i < 8; ++i) encoded[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  return encoded + text;
}

}  // namespace

void WriteSafetensors(const fs::path& path, const std::vector<TensorBytes>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorMeta> metas;
  for (const auto& tensor : tensors) {
    metas.push_back(TensorMeta{tensor.name, tensor.dtype, tensor.shape});
    if (metas.back().nbytes() != tensor.nbytes) {
      Fail(ErrorCode::kInvalidArgument, "{}: tensor '{}' has {} bytes but its shape needs {}", path.string(),
           tensor.name, tensor.nbytes, metas.back().nbytes());
    }
  }
  const std::string header = EncodeHeader(metas, metadata, path.string());
  AtomicFileWriter writer(path);
  writer.Write(header);
  for (const auto& tensor : tensors) writer.Write(tensor.data, tensor.nbytes);
  writer.Commit();
}

void WriteSafetensorsModel(const fs::path& dir, const std::vector<TensorBytes>& tensors, uint64_t max_shard_bytes) {
  std::vector<TensorMeta> metas;
  for (const auto& tensor : tensors) metas.push_back(TensorMeta{tensor.name, tensor.dtype, tensor.shape});
  SafetensorsModelWriter writer(dir, metas, max_shard_bytes);
  for (const auto& tensor : tensors) writer.Append(tensor.name, tensor.data, tensor.nbytes);
  writer.Finish();
}

struct SafetensorsModelWriter::Shard {
  std::string file_name;
  size_t first = 0;  // tensor indices [first, end)
  size_t end = 0;
  std::unique_ptr<AtomicFileWriter> writer;
};

SafetensorsModelWriter::SafetensorsModelWriter(fs::path dir, std::vector<TensorMeta> tensors, uint64_t max_shard_bytes,
                                               FileShare share)
    : dir_(std::move(dir)), tensors_(std::move(tensors)), share_(share) {
  ST_CHECK(share_.count > 0 && share_.index >= 0 && share_.index < share_.count, "file share {} of {}", share_.index,
           share_.count);
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].nbytes() == 0) {
      Fail(ErrorCode::kInvalidArgument, "{}: refusing to export tensor '{}' with no elements", dir_.string(),
           tensors_[i].name);
    }
    if (shards_.empty() || (shard_bytes > 0 && shard_bytes + tensors_[i].nbytes() > max_shard_bytes)) {
      shards_.emplace_back();
      shards_.back().first = i;
      shard_bytes = 0;
    }
    shards_.back().end = i + 1;
    shard_bytes += tensors_[i].nbytes();
    file_of_.push_back(shards_.size() - 1);
    index_of_.emplace(tensors_[i].name, i);
  }
  for (size_t k = 0; k < shards_.size(); ++k) {
    shards_[k].file_name = shards_.size() == 1
                               ? "model.safetensors"
                               : fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards_.size());
  }
}

SafetensorsModelWriter::~SafetensorsModelWriter() = default;

bool SafetensorsModelWriter::Writes(const std::string& name) const {
  const auto it = index_of_.find(name);
  return it != index_of_.end() && share_.Holds(file_of_[it->second]);
}

void SafetensorsModelWriter::SkipOthers() {
  while (next_ < tensors_.size() && !share_.Holds(file_of_[next_])) ++next_;
}

void SafetensorsModelWriter::OpenShard(size_t k) {
  Shard& shard = shards_[k];
  const std::vector<TensorMeta> metas(tensors_.begin() + static_cast<std::ptrdiff_t>(shard.first),
                                      tensors_.begin() + static_cast<std::ptrdiff_t>(shard.end));
  shard.writer = std::make_unique<AtomicFileWriter>(dir_ / shard.file_name);
  shard.writer->Write(EncodeHeader(metas, {{"format", "pt"}}, (dir_ / shard.file_name).string()));
}

void SafetensorsModelWriter::Append(const std::string& name, const void* data, size_t nbytes) {
  SkipOthers();
  ST_CHECK(next_ < tensors_.size() && tensors_[next_].name == name,
           "tensor '{}' appended out of the declared order (or not in this process's files)", name);
  ST_CHECK(nbytes == tensors_[next_].nbytes(), "tensor '{}' has {} bytes, declared {}", name, nbytes,
           tensors_[next_].nbytes());
  Shard& shard = shards_[file_of_[next_]];
  if (!shard.writer) OpenShard(file_of_[next_]);
  shard.writer->Write(data, nbytes);
  if (++next_ == shard.end) {
    shard.writer->Commit();
    shard.writer.reset();
  }
}

void SafetensorsModelWriter::Finish() {
  SkipOthers();
  ST_CHECK(next_ == tensors_.size(), "tensor '{}' (of {}) was not appended",
           next_ < tensors_.size() ? tensors_[next_].name : "", tensors_.size());
  if (shards_.size() <= 1 || share_.index != 0) return;
  json weight_map = json::object();
  uint64_t total = 0;
  for (const auto& shard : shards_) {
    for (size_t i = shard.first; i < shard.end; ++i) {
      weight_map[tensors_[i].name] = shard.file_name;
      total += tensors_[i].nbytes();
    }
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  WriteFileAtomic(dir_ / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace shardtune
