#pragma once
// Where ZeroEngine::LoadWeights takes a model's initial values from: a range of elements of one
// parameter at a time, so that a rank reads only what it keeps (docs/sharding.md, "Loading").
//
// Contract: Read(parameter, begin, count, out) writes elements [begin, begin + count) of the
// parameter, flattened in row-major order, into `out` (1-D, `count` elements, contiguous, any
// dtype and device). Values pass through fp32 (source dtype -> fp32 -> out's dtype), so a range
// holds bit for bit what converting the whole tensor to fp32 and then to out's dtype gives. One
// thread; a source is used by one engine's load at a time.
//
// A parameter held 4-bit (QLoRA's base, quant4.h) is read as records instead where the source
// holds it so already (a pre-quantized checkpoint, ReadRecords); otherwise its values are read and
// quantized by the engine.

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "common/safetensors.h"
#include "sharding/parameter_layout.h"
#include "sharding/prequantized.h"

namespace shardtune {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual void Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) = 0;
  // Where the source holds `parameter` already quantized: writes its records [first, first +
  // count) in `format` to `records` and returns true (an Error if it holds another format). False
  // where it holds values.
  virtual bool ReadRecords(const ParameterSpec& parameter, const Quant4Format& format, int64_t first, int64_t count,
                           uint8_t* records) {
    return false;
  }
};

// Whole fp32 tensors that a function computes (an adapter's initialization, a new classifier
// head, a test's map), shaped as their spec: each Read takes its range of the function's result.
class WholeTensorSource : public WeightSource {
 public:
  explicit WholeTensorSource(std::function<at::Tensor(const ParameterSpec&)> whole) : whole_(std::move(whole)) {}
  void Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) override;

 private:
  std::function<at::Tensor(const ParameterSpec&)> whole_;
};

// The at::ScalarType of a safetensors dtype that weights may have (F32, F16, BF16); nullopt for others.
std::optional<at::ScalarType> WeightScalarType(DType dtype);

// The entry of `spec` in a Hugging Face checkpoint read from `dir`, checked: present, of the
// spec's shape, in a weight dtype. Throws Error naming the file (or `dir`) and the tensor.
SafetensorsCheckpoint::Entry CheckedWeightEntry(const SafetensorsCheckpoint& checkpoint,
                                                const std::filesystem::path& dir, const ParameterSpec& spec);

// The tensors of a Hugging Face checkpoint directory (model.safetensors or an index and its
// files), read by byte range with pread: only the bytes of the elements asked for, never a
// mapping (mapped pages would count in the process's resident memory and be read ahead). Where
// the out tensor is in host memory and of the file's dtype the bytes land in it directly;
// otherwise they pass through a staging buffer of at most `buffer_bytes` (with the fp32 copy a
// 16-bit conversion needs), converted a chunk at a time.
//
// A weight the checkpoint holds 4-bit (prequantized.h) gives its records to ReadRecords, reading
// only theirs; Read dequantizes the records holding the range asked for (a 4-bit weight the job
// keeps in full precision, such as a module it trains in full).
class SafetensorsWeightSource : public WeightSource {
 public:
  // Opens and validates every file's header (an Error naming the file, and the tensor where one
  // is at fault, for a malformed or truncated file).
  SafetensorsWeightSource(const std::filesystem::path& dir, int64_t buffer_bytes);
  ~SafetensorsWeightSource() override;
  SafetensorsWeightSource(const SafetensorsWeightSource&) = delete;
  SafetensorsWeightSource& operator=(const SafetensorsWeightSource&) = delete;

  // Checks, before anything is read, that each of `parameters` is in the checkpoint with its
  // shape and a weight dtype (or stored 4-bit with that shape), and that its files still hold all
  // of its bytes; the first problem is an Error naming the file and the tensor. Every rank
  // checks, so every rank reports it.
  void Check(const std::vector<ParameterSpec>& parameters);

  void Read(const ParameterSpec& parameter, int64_t begin, int64_t count, at::Tensor out) override;
  bool ReadRecords(const ParameterSpec& parameter, const Quant4Format& format, int64_t first, int64_t count,
                   uint8_t* records) override;
  // The whole parameter in fp32 (read and counted like any range).
  at::Tensor ReadWhole(const ParameterSpec& parameter);

  const SafetensorsCheckpoint& checkpoint() const { return checkpoint_; }
  // The checkpoint's 4-bit weights, by name (empty for an ordinary checkpoint).
  const std::map<std::string, PrequantizedWeight>& prequantized() const { return prequantized_; }
  // Bytes read from the checkpoint's files so far.
  int64_t bytes_read() const { return bytes_read_; }

 private:
  int FileDescriptor(const SafetensorsFile& file);
  // Reads `size` bytes at `offset` of the data section of `entry`'s file into `destination`.
  void ReadBytes(const SafetensorsCheckpoint::Entry& entry, uint64_t offset, void* destination, uint64_t size);

  std::filesystem::path dir_;
  SafetensorsCheckpoint checkpoint_;
  std::map<std::string, PrequantizedWeight> prequantized_;
  int64_t buffer_bytes_;
  std::map<const SafetensorsFile*, int> descriptors_;
  at::Tensor staging_;  // bytes, grown as needed up to buffer_bytes_
  int64_t bytes_read_ = 0;
};

}  // namespace shardtune
