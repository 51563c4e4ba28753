#pragma once
// Collective communication among the ranks of one process group.
//
// Contract:
// - Every rank of the group issues the same collectives in the same order, with tensors of the
//   same dtype and element count (ReduceScatter: input = size() x output; AllGather: output =
//   size() x input). A rank that issues a different sequence makes the group hang until the
//   collective timeout fires on every rank.
// - Calls are made by one thread at a time: the training thread, or, while a unit's backward
//   runs on a GPU, autograd's thread for that device. They return at once with a Work handle;
//   the operation runs in issue order, overlapping whatever the caller computes next.
// - The caller owns the tensors and must keep them alive, contiguous and untouched (inputs and
//   outputs alike) until Wait() returns. Sums are in the tensors' dtype (fp32, bf16 or fp16).
// - Wait() throws CollectiveError when the operation has not finished within the group's
//   timeout or has failed; the error names the rank, the collective, the bucket and the step.
//   After an error the group is unusable: the caller fails the job (every rank does).

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "common/error.h"

namespace shardtune {

struct CommStats {
  int64_t bytes_sent = 0;
  double busy_s = 0;
  double waited_s = 0;
  CommStats& operator+=(const CommStats& o) {
    bytes_sent += o.bytes_sent;
    busy_s += o.busy_s;
    waited_s += o.waited_s;
    return *this;
  }
};

// What a collective is for, carried into error messages: "all_gather of bucket 3 at step 12".
struct CollectiveTag {
  std::string bucket = "-";  // e.g. "layer 3", "embed", "loss"
  int64_t step = -1;
};

class CollectiveError : public Error {
 public:
  explicit CollectiveError(const std::string& message) : Error(ErrorCode::kInternal, message) {}
};

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation completed; throws CollectiveError on timeout or failure.
  virtual void Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // within this group
  virtual int size() const = 0;
  virtual int world_rank() const = 0;    // for messages
  virtual std::string name() const = 0;  // "world", "shard group 0", ...
  // Where this group's tensors live: the CPU for MPI, this rank's GPU for NCCL.
  virtual at::Device device() const { return at::kCPU; }

  // In place: every rank ends with the sum over ranks.
  virtual std::unique_ptr<Work> AllReduceSum(at::Tensor& tensor, const CollectiveTag& tag) = 0;
  // Rank r ends with the sum over ranks of input[r * n, (r + 1) * n), n = output.numel().
  virtual std::unique_ptr<Work> ReduceScatterSum(const at::Tensor& input, at::Tensor& output,
                                                 const CollectiveTag& tag) = 0;
  // output[r * n, (r + 1) * n) = rank r's input, n = input.numel(). In place when input is this
  // rank's own part of output.
  virtual std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output, const CollectiveTag& tag) = 0;
  virtual std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root, const CollectiveTag& tag) = 0;
  virtual void Barrier(const CollectiveTag& tag) = 0;

  // A new group of the ranks that pass the same `color`, ordered by `key`. Collective over this group.
  virtual std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) = 0;

  // What this group's collectives cost this rank so far: bytes sent (as the ring algorithms
  // send them), seconds they were in flight (issued to completed; MPI only), and seconds the
  // caller was blocked in Wait() on them: the communication that computation did not hide.
  CommStats stats() const {
    return {bytes_sent_, static_cast<double>(times_->busy_ns) * 1e-9, static_cast<double>(times_->waited_ns) * 1e-9};
  }
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  // Added to by the backends' operations and Work handles (from any thread; shared, so that a
  // handle may outlive its group).
  struct Times {
    std::atomic<int64_t> busy_ns{0};
    std::atomic<int64_t> waited_ns{0};
  };
  void CountSent(int64_t bytes) { bytes_sent_ += bytes; }
  // The contract's operands, checked before anything is issued (a wrong size would read or
  // write past a buffer): contiguous and on this group's device; for reduce-scatter and
  // all-gather, a whole of size() parts of one dtype.
  void CheckOperand(const char* op, const at::Tensor& tensor) const {
    ST_CHECK(tensor.is_contiguous() && tensor.device() == device(),
             "{} in {} needs a contiguous tensor on {}, got {}{}", op, name(), device().str(),
             tensor.is_contiguous() ? "" : "a strided one on ", tensor.device().str());
  }
  void CheckParts(const char* op, const at::Tensor& whole, const at::Tensor& part) const {
    CheckOperand(op, whole);
    CheckOperand(op, part);
    ST_CHECK(whole.scalar_type() == part.scalar_type() && whole.numel() == part.numel() * size(),
             "{} in {}: {} {} elements are not {} x {} {}", op, name(), whole.numel(),
             c10::toString(whole.scalar_type()), size(), part.numel(), c10::toString(part.scalar_type()));
  }
  const std::shared_ptr<Times>& times() const { return times_; }

 private:
  int64_t bytes_sent_ = 0;
  std::shared_ptr<Times> times_ = std::make_shared<Times>();
};

// Blocking helpers.
inline void AllReduceSumNow(Communicator& comm, at::Tensor& tensor, const CollectiveTag& tag) {
  comm.AllReduceSum(tensor, tag)->Wait();
}

// A Work that has already completed.
class DoneWork : public Work {
 public:
  void Wait() override {}
};

// The group of one process: every collective is a local copy. The world of `shardtune train`
// without mpirun, and the reference the MPI and NCCL groups are tested against.
class SingleProcessCommunicator : public Communicator {
 public:
  explicit SingleProcessCommunicator(std::string name = "world") : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int world_rank() const override { return 0; }
  std::string name() const override { return name_; }
  std::unique_ptr<Work> AllReduceSum(at::Tensor& tensor, const CollectiveTag&) override {
    CheckOperand("all_reduce", tensor);
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> ReduceScatterSum(const at::Tensor& input, at::Tensor& output, const CollectiveTag&) override {
    CheckParts("reduce_scatter", input, output);
    if (input.data_ptr() != output.data_ptr()) output.copy_(input.view_as(output));
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output, const CollectiveTag&) override {
    CheckParts("all_gather", output, input);
    if (input.data_ptr() != output.data_ptr()) output.copy_(input.view_as(output));
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int, const CollectiveTag&) override {
    CheckOperand("broadcast", tensor);
    return std::make_unique<DoneWork>();
  }
  void Barrier(const CollectiveTag&) override {}
  std::unique_ptr<Communicator> Split(int, int, const std::string& name) override {
    return std::make_unique<SingleProcessCommunicator>(name);
  }

 private:
  std::string name_;
};

}  // namespace shardtune
