#pragma once
// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON mapping tensor names to {dtype, shape, data_offsets} (plus an optional string map
// "__metadata__"), then the tensors' bytes, packed with no gaps. Reading memory-maps the file and
// validates every header field against the data section before any byte is used; writing
// produces what `safetensors` and `transformers` load (8-byte-aligned header, format "pt").
// No LibTorch here: the worker wraps the bytes into tensors.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

enum class DType { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64, kF8E4M3, kF8E5M2 };

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);  // the format's own spelling: "F32", "BF16", ...
std::optional<DType> ParseDType(std::string_view name);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  uint64_t end = 0;

  int64_t numel() const;
};

struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Headers larger than this are refused (as the reference implementation does): a corrupt length
// must not make us allocate gigabytes.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses and validates a header whose data section holds `data_size` bytes. `where` (the file
// name) prefixes every error. Throws Error(kDataLoss).
SafetensorsHeader ParseSafetensorsHeader(std::string_view json, uint64_t data_size, const std::string& where);

// A validated, memory-mapped safetensors file. Tensor bytes stay valid while the object lives.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorInfo* Find(const std::string& name) const;
  const std::byte* Data(const TensorInfo& info) const { return data_ + info.begin; }
  // Drops the pages of `info`'s bytes from this process's resident memory (they stay in the page
  // cache; a later Data() reads them back): a reader that streams tensor after tensor through a
  // mapping calls it once done with each, so that its RSS stays one tensor, not the file.
  void Evict(const TensorInfo& info) const;
  // Where the data section starts in the file (after the length and the header): a tensor's
  // bytes are at data_offset() + [info.begin, info.end), for readers that do not map the file.
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  SafetensorsHeader header_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const std::byte* data_ = nullptr;
  uint64_t data_offset_ = 0;
};

// The header of the safetensors file at `path`, read without mapping the file (for readers that
// pread the data), validated as SafetensorsFile::Open validates it; `data_offset` is the file
// offset of the data section (tensor bytes [begin, end) lie at data_offset + begin). Throws
// Error naming the file: missing, truncated, or a header that does not describe the file.
struct SafetensorsFileHeader {
  SafetensorsHeader header;
  uint64_t data_offset = 0;
};
SafetensorsFileHeader ReadSafetensorsFileHeader(const std::filesystem::path& path);
// Reads `size` bytes at file offset `offset` of `path` into `out` (pread, no mapping: the bytes
// cost the caller's buffer only). Throws Error naming the file when it ends before them.
void ReadFileRange(const std::filesystem::path& path, uint64_t offset, void* out, size_t size);

// A Hugging Face checkpoint: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (its weight_map names the file of each tensor).
class SafetensorsCheckpoint {
 public:
  // `dir` holds the files; throws Error naming the missing or malformed file.
  static SafetensorsCheckpoint Open(const std::filesystem::path& dir);

  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  // nullptr-filled Entry when absent.
  std::optional<Entry> Find(const std::string& name) const;
  std::vector<std::string> Names() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
};

// A tensor to write: bytes owned by the caller for the duration of the write.
struct TensorBytes {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// Writes one safetensors file atomically. Throws Error(kInvalidArgument) for duplicate names or
// sizes that disagree with shape x dtype.
void WriteSafetensors(const std::filesystem::path& path, const std::vector<TensorBytes>& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The most bytes of one file of a model written in Hugging Face layout (transformers' own
// max_shard_size default is 5GB too).
inline constexpr uint64_t kMaxModelFileBytes = 5'000'000'000ULL;

// Writes a model in Hugging Face layout into `dir`: `model.safetensors` when it fits in
// `max_shard_bytes`, else `model-0000K-of-0000N.safetensors` shards plus
// `model.safetensors.index.json`.
void WriteSafetensorsModel(const std::filesystem::path& dir, const std::vector<TensorBytes>& tensors,
                           uint64_t max_shard_bytes = kMaxModelFileBytes);

struct TensorMeta {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

// Which of a model's files a process writes when several write one model together: file k
// (0-based, in order) is process k mod count's.
struct FileShare {
  int index = 0;  // this process, 0 .. count - 1
  int count = 1;
  bool Holds(size_t file) const { return static_cast<int>(file % static_cast<size_t>(count)) == index; }
};

// The same layout as WriteSafetensorsModel, written one tensor at a time so that no more than
// one tensor needs to be in memory: the tensors, their shapes and their order are declared up
// front (the headers come first in each file), then appended in that order. Each file is
// committed atomically when its last tensor arrives; nothing is visible before. Empty tensors
// are refused: an export with one is broken.
//
// Several processes may write one model into one directory: each constructs the writer with the
// same tensors and max_shard_bytes (the split into files depends on those alone, so every
// process computes the same one, and it is the one-process layout) and its own `share`, appends
// only the tensors its files hold (Writes), and calls Finish; share index 0 writes
// model.safetensors.index.json. The caller makes the directory visible only once every process
// has finished (StagedDirectory, committed after a barrier).
class SafetensorsModelWriter {
 public:
  SafetensorsModelWriter(std::filesystem::path dir, std::vector<TensorMeta> tensors,
                         uint64_t max_shard_bytes = kMaxModelFileBytes, FileShare share = {});
  ~SafetensorsModelWriter();
  // Whether tensor `name` lies in one of this process's files.
  bool Writes(const std::string& name) const;
  // The next of this process's tensors, in the declared order.
  void Append(const std::string& name, const void* data, size_t nbytes);
  // Checks that every tensor of this process's files was appended; writes the index (share 0).
  void Finish();

 private:
  struct Shard;
  void OpenShard(size_t k);
  void SkipOthers();  // moves next_ past tensors of other processes' files
  std::filesystem::path dir_;
  std::vector<TensorMeta> tensors_;
  std::vector<size_t> file_of_;  // the file of each tensor
  std::map<std::string, size_t> index_of_;
  std::vector<Shard> shards_;
  FileShare share_;
  size_t next_ = 0;  // index of the next tensor to append
};

}  // namespace shardtune
