#include "sharding/weight_source.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

std::string ShapeText(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Copies `from` into `to` as converting through fp32 would: one conversion where either side is
// fp32, else through an fp32 copy (a 16-bit type into another never rounds straight across).
void CopyThroughFp32(const at::Tensor& from, at::Tensor to) {
  if (from.scalar_type() == at::kFloat || to.scalar_type() == at::kFloat) {
    to.copy_(from);
  } else {
    to.copy_(from.to(at::kFloat));
  }
}

}  // namespace

void WholeTensorSource::Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) {
  const at::Tensor whole = whole_(parameter);
  ST_CHECK(whole.numel() == NumelOf(parameter.shape),
           "the initial value of '{}' has {} elements, its shape {} needs {}", parameter.name, whole.numel(),
           ShapeText(parameter.shape), NumelOf(parameter.shape));
  CopyThroughFp32(whole.reshape({-1}).narrow(0, begin, count), out);
}

std::optional<at::ScalarType> WeightScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    default:
      return std::nullopt;
  }
}

SafetensorsCheckpoint::Entry CheckedWeightEntry(const SafetensorsCheckpoint& checkpoint, const fs::path& dir,
                                                const ParameterSpec& spec) {
  const auto entry = checkpoint.Find(spec.name);
  if (!entry) {
    Fail(ErrorCode::kNotFound, "{}: tensor '{}' (shape {}) is missing from the checkpoint", dir.string(), spec.name,
         ShapeText(spec.shape));
  }
  const TensorInfo& info = *entry->info;
  const std::string file = entry->file->path().string();
  if (info.shape != spec.shape) {
    Fail(ErrorCode::kInvalidArgument, "{}: tensor '{}' has shape {} but config.json implies {}", file, spec.name,
         ShapeText(info.shape), ShapeText(spec.shape));
  }
  if (!WeightScalarType(info.dtype)) {
    Fail(ErrorCode::kUnimplemented, "{}: tensor '{}' is {}; supported weight dtypes are F32, F16, BF16", file,
         info.name, DTypeName(info.dtype));
  }
  return *entry;
}

SafetensorsWeightSource::SafetensorsWeightSource(const fs::path& dir, int64_t buffer_bytes)
    : dir_(dir),
      checkpoint_(SafetensorsCheckpoint::Open(dir)),
      prequantized_(FindPrequantizedWeights(checkpoint_, dir)),
      buffer_bytes_(std::max<int64_t>(buffer_bytes, 64)) {}

SafetensorsWeightSource::~SafetensorsWeightSource() {
  for (const auto& [_, fd] : descriptors_) ::close(fd);
}

int SafetensorsWeightSource::FileDescriptor(const SafetensorsFile& file) {
  const auto it = descriptors_.find(&file);
  if (it != descriptors_.end()) return it->second;
  const int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  ST_SYSCALL_CHECK(fd, file.path().string());
  descriptors_[&file] = fd;
  return fd;
}

void SafetensorsWeightSource::Check(const std::vector<ParameterSpec>& parameters) {
  // The header was validated against the file's size when it was opened; a file cut short since
  // (a copy still being written) is caught here rather than by a short read half-way.
  auto check_whole = [&](const SafetensorsCheckpoint::Entry& entry) {
    struct stat st {};
    ST_SYSCALL_CHECK(::fstat(FileDescriptor(*entry.file), &st), entry.file->path().string());
    const uint64_t end = entry.file->data_offset() + entry.info->end;
    if (static_cast<uint64_t>(st.st_size) < end) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}' ends at byte {}, but the file has {} bytes (truncated?)",
           entry.file->path().string(), entry.info->name, end, st.st_size);
    }
  };
  for (const ParameterSpec& spec : parameters) {
    const auto quantized = prequantized_.find(spec.name);
    if (quantized == prequantized_.end()) {
      check_whole(CheckedWeightEntry(checkpoint_, dir_, spec));
      continue;
    }
    CheckPrequantizedShape(quantized->second, spec.shape);
    for (const SafetensorsCheckpoint::Entry& entry : quantized->second.entries()) check_whole(entry);
  }
}

void SafetensorsWeightSource::ReadBytes(const SafetensorsCheckpoint::Entry& entry, uint64_t offset, void* destination,
                                        uint64_t size) {
  const int fd = FileDescriptor(*entry.file);
  auto* bytes = static_cast<char*>(destination);
  const uint64_t start = entry.file->data_offset() + entry.info->begin + offset;
  for (uint64_t done = 0; done < size;) {
    const ssize_t n = ::pread(fd, bytes + done, size - done, static_cast<off_t>(start + done));
    if (n < 0 && errno == EINTR) continue;
    ST_SYSCALL_CHECK(n, entry.file->path().string());
    if (n == 0) {
      Fail(ErrorCode::kDataLoss, "{}: tensor '{}': the file ends at byte {}, inside the tensor's bytes (truncated?)",
           entry.file->path().string(), entry.info->name, start + done);
    }
    done += static_cast<uint64_t>(n);
    bytes_read_ += n;
  }
}

void SafetensorsWeightSource::Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) {
  if (const auto quantized = prequantized_.find(parameter.name); quantized != prequantized_.end()) {
    // The records holding the range, dequantized (fp32, then out's dtype).
    const PrequantizedWeight& weight = quantized->second;
    const int64_t per_record = weight.format.record_elements();
    ST_CHECK(begin >= 0 && count > 0 && begin + count <= weight.numel() && out.numel() == count,
             "reading elements [{}, {}) of '{}' ({} elements)", begin, begin + count, parameter.name, weight.numel());
    const int64_t first = begin / per_record, records = (begin + count + per_record - 1) / per_record - first;
    std::vector<uint8_t> bytes(records * weight.format.record_bytes());
    ReadRecords(parameter, weight.format, first, records, bytes.data());
    const int64_t skip = begin - first * per_record;
    at::Tensor values = at::empty({skip + count}, at::kFloat);
    DequantizeRecords(bytes.data(), skip + count, weight.format, values.data_ptr<float>());
    CopyThroughFp32(values.narrow(0, skip, count), out);
    return;
  }
  const SafetensorsCheckpoint::Entry entry = CheckedWeightEntry(checkpoint_, dir_, parameter);
  ST_CHECK(
      begin >= 0 && count >= 0 && begin + count <= entry.info->numel() && out.numel() == count && out.is_contiguous(),
      "reading elements [{}, {}) of '{}' ({} elements) into {} elements", begin, begin + count, parameter.name,
      entry.info->numel(), out.numel());
  const at::ScalarType type = *WeightScalarType(entry.info->dtype);
  const auto element = static_cast<int64_t>(DTypeSize(entry.info->dtype));
  if (out.device().is_cpu() && out.scalar_type() == type) {  // the bytes are the values: straight in
    ReadBytes(entry, begin * element, out.data_ptr(), count * element);
    return;
  }
  // A chunk's bytes and, for a 16-bit conversion, its fp32 copy fit in the buffer.
  const int64_t chunk = std::max<int64_t>(1, buffer_bytes_ / (element + 4));
  const int64_t staged = std::min(chunk, count) * element;
  if (!staging_.defined() || staging_.numel() < staged) staging_ = at::empty({staged}, at::kByte);
  for (int64_t done = 0; done < count; done += chunk) {
    const int64_t n = std::min(chunk, count - done);
    ReadBytes(entry, (begin + done) * element, staging_.data_ptr(), n * element);
    CopyThroughFp32(at::from_blob(staging_.data_ptr(), {n}, at::TensorOptions().dtype(type)), out.narrow(0, done, n));
  }
}

bool SafetensorsWeightSource::ReadRecords(const ParameterSpec& parameter, const Quant4Format& format, int64_t first,
                                          int64_t count, uint8_t* records) {
  const auto quantized = prequantized_.find(parameter.name);
  if (quantized == prequantized_.end()) return false;
  const PrequantizedWeight& weight = quantized->second;
  if (weight.format != format) {
    Fail(ErrorCode::kInvalidArgument, "{}: tensor '{}' is stored 4-bit as {}; the job holds it as {}",
         weight.packed.file->path().string(), parameter.name, Quant4FormatText(weight.format),
         Quant4FormatText(format));
  }
  ReadPrequantizedRecords(
      weight, first, count,
      [&](const SafetensorsCheckpoint::Entry& entry, uint64_t offset, void* out, uint64_t size) {
        ReadBytes(entry, offset, out, size);
      },
      records);
  return true;
}

at::Tensor SafetensorsWeightSource::ReadWhole(const ParameterSpec& parameter) {
  at::Tensor whole = at::empty(parameter.shape, at::kFloat);
  Read(parameter, 0, whole.numel(), whole.view({-1}));
  return whole;
}

}  // namespace shardtune
