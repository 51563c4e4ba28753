#include "sharding/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>

namespace shardtune {

namespace {

// The statement, file:line and the library's own message.
#define ST_CUDA_CHECK(stmt)                                                                                        \
  do {                                                                                                             \
    const cudaError_t st_err = (stmt);                                                                             \
    if (st_err != cudaSuccess)                                                                                     \
      Fail(ErrorCode::kInternal, "{} failed at {}:{}: {}", #stmt, __FILE__, __LINE__, cudaGetErrorString(st_err)); \
  } while (0)

#define ST_NCCL_CHECK(stmt)                                                                              \
  do {                                                                                                   \
    const ncclResult_t st_res = (stmt);                                                                  \
    if (st_res != ncclSuccess)                                                                           \
      throw CollectiveError(                                                                             \
          fmt::format("{} failed at {}:{}: {}", #stmt, __FILE__, __LINE__, ncclGetErrorString(st_res))); \
  } while (0)

ncclDataType_t NcclType(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kLong:
      return ncclInt64;
    default:
      Fail(ErrorCode::kInternal, "no NCCL type for {}", c10::toString(tensor.scalar_type()));
  }
}

// A communicator and whether it was aborted (after which it must not be destroyed again).
struct NcclState {
  ncclComm_t comm = nullptr;
  std::atomic<bool> aborted{false};
  void Abort() {
    if (!aborted.exchange(true)) ncclCommAbort(comm);
  }
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> state, cudaEvent_t done, double timeout_s, std::string what,
           std::shared_ptr<std::atomic<int64_t>> waited_ns)
      : state_(std::move(state)),
        done_(done),
        timeout_s_(timeout_s),
        what_(std::move(what)),
        waited_ns_(std::move(waited_ns)) {}
  ~NcclWork() override { cudaEventDestroy(done_); }

  void Wait() override {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      const cudaError_t state = cudaEventQuery(done_);
      if (state == cudaSuccess) break;
      if (state != cudaErrorNotReady)
        throw CollectiveError(fmt::format("{} failed: {}", what_, cudaGetErrorString(state)));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(state_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        state_->Abort();
        throw CollectiveError(fmt::format("{} failed: {}", what_, ncclGetErrorString(async)));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        state_->Abort();
        throw CollectiveError(
            fmt::format("{} did not complete within the collective timeout of {} s", what_, timeout_s_));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    ST_CUDA_CHECK(cudaStreamWaitEvent(cudaStreamLegacy, done_, 0));
    *waited_ns_ +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  }

 private:
  std::shared_ptr<NcclState> state_;
  cudaEvent_t done_;
  double timeout_s_;
  std::string what_;
  std::shared_ptr<std::atomic<int64_t>> waited_ns_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, double timeout_s, std::unique_ptr<Communicator> owned_bootstrap = nullptr)
      : owned_bootstrap_(std::move(owned_bootstrap)), bootstrap_(bootstrap), timeout_s_(timeout_s) {
    ncclUniqueId id;
    if (bootstrap_.rank() == 0) ST_NCCL_CHECK(ncclGetUniqueId(&id));
    // Broadcast as int64 words (the MPI backend has no byte type for collectives).
    at::Tensor words = at::zeros({static_cast<int64_t>((sizeof(id) + 7) / 8)}, at::kLong);
    std::memcpy(words.data_ptr(), &id, sizeof(id));
    bootstrap_.Broadcast(words, 0, CollectiveTag{"nccl unique id"})->Wait();
    std::memcpy(&id, words.data_ptr(), sizeof(id));
    ST_CUDA_CHECK(cudaGetDevice(&device_));
    ST_NCCL_CHECK(ncclCommInitRank(&state_->comm, bootstrap_.size(), id, bootstrap_.rank()));
    comm_ = state_->comm;
    ST_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~NcclCommunicator() override {
    // ncclCommDestroy waits for pending work, which never ends when a peer is gone: during an
    // error (an exception unwinding, or an earlier abort) abort instead.
    if (std::uncaught_exceptions() > 0) state_->Abort();
    if (!state_->aborted) ncclCommDestroy(state_->comm);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }
  int world_rank() const override { return bootstrap_.world_rank(); }
  std::string name() const override { return bootstrap_.name(); }
  at::Device device() const override { return at::Device(at::kCUDA, device_); }

  std::unique_ptr<Work> AllReduceSum(at::Tensor& tensor, const CollectiveTag& tag) override {
    CountSent(2 * (size() - 1) * static_cast<int64_t>(tensor.nbytes()) / size());
    return Launch("all_reduce", tag, tensor, [&] {
      return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), NcclType(tensor), ncclSum, comm_,
                           stream_);
    });
  }
  std::unique_ptr<Work> ReduceScatterSum(const at::Tensor& input, at::Tensor& output,
                                         const CollectiveTag& tag) override {
    CountSent((size() - 1) * static_cast<int64_t>(output.nbytes()));
    return Launch("reduce_scatter", tag, input, [&] {
      return ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), NcclType(input), ncclSum, comm_,
                               stream_);
    });
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output, const CollectiveTag& tag) override {
    CountSent((size() - 1) * static_cast<int64_t>(input.nbytes()));
    return Launch("all_gather", tag, output, [&] {
      return ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(), NcclType(input), comm_, stream_);
    });
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root, const CollectiveTag& tag) override {
    if (rank() == root) CountSent(static_cast<int64_t>(tensor.nbytes()));
    return Launch("broadcast", tag, tensor, [&] {
      return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), NcclType(tensor), root, comm_,
                           stream_);
    });
  }
  void Barrier(const CollectiveTag& tag) override {
    at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(device()));
    AllReduceSum(one, tag)->Wait();
    ST_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    auto bootstrap = bootstrap_.Split(color, key, name);
    Communicator& ref = *bootstrap;
    return std::make_unique<NcclCommunicator>(ref, timeout_s_, std::move(bootstrap));
  }

 private:
  template <typename Call>
  std::unique_ptr<Work> Launch(const char* op, const CollectiveTag& tag, const at::Tensor& tensor, Call call) {
    ST_CHECK(tensor.is_cuda() && tensor.is_contiguous(), "{} needs a contiguous CUDA tensor", op);
    const std::string what = fmt::format("rank {}: {} of {} in {} at step {} ({} elements)", world_rank(), op,
                                         tag.bucket, name(), tag.step, tensor.numel());
    // The collective reads what the compute stream has produced so far.
    cudaEvent_t ready, done;
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(ready, cudaStreamLegacy));
    ST_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    cudaEventDestroy(ready);
    const ncclResult_t result = call();
    if (result != ncclSuccess) throw CollectiveError(fmt::format("{} failed: {}", what, ncclGetErrorString(result)));
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(done, stream_));
    return std::make_unique<NcclWork>(state_, done, timeout_s_, what,
                                      std::shared_ptr<std::atomic<int64_t>>(times(), &times()->waited_ns));
  }

  std::unique_ptr<Communicator> owned_bootstrap_;
  Communicator& bootstrap_;
  double timeout_s_;
  std::shared_ptr<NcclState> state_ = std::make_shared<NcclState>();
  ncclComm_t comm_ = nullptr;  // state_->comm
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

}  // namespace

int CudaDeviceCount() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess ? devices : 0;
}

bool NcclAvailable() { return CudaDeviceCount() > 0; }

std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap, double timeout_s) {
  if (!NcclAvailable()) Fail(ErrorCode::kFailedPrecondition, "NCCL needs a CUDA device, and this process sees none");
  // One GPU per rank: the rank's index among the ranks of its machine picks one of the GPUs it
  // sees (a launcher may have narrowed those to one per rank already).
  const int devices = CudaDeviceCount();
  int local_rank = 0;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"}) {
    if (const char* value = std::getenv(name)) {
      local_rank = std::atoi(value);
      break;
    }
  }
  const int device = local_rank % devices;
  ST_CUDA_CHECK(cudaSetDevice(device));
  // NCCL refuses two ranks of one communicator on one GPU. Every rank learns every rank's GPU
  // (by its UUID) and, where two share one, all fail alike, naming them, before NCCL would.
  cudaDeviceProp properties;
  ST_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  static_assert(sizeof(properties.uuid.bytes) == 16);
  at::Tensor mine = at::zeros({2}, at::kLong);
  std::memcpy(mine.data_ptr(), properties.uuid.bytes, sizeof(properties.uuid.bytes));
  at::Tensor all = at::empty({2 * bootstrap.size()}, at::kLong);
  bootstrap.AllGather(mine, all, CollectiveTag{"gpu uuids"})->Wait();
  const int64_t* uuids = all.data_ptr<int64_t>();
  for (int r = 0; r < bootstrap.size(); ++r) {
    for (int q = 0; q < r; ++q) {
      if (uuids[2 * q] == uuids[2 * r] && uuids[2 * q + 1] == uuids[2 * r + 1]) {
        Fail(ErrorCode::kFailedPrecondition,
             "ranks {} and {} of group {} would share one GPU, and NCCL needs a GPU per rank (this rank sees {}): "
             "start at most as many ranks per machine as it has GPUs, or train on the CPU with sharding.backend: mpi",
             q, r, bootstrap.name(), devices);
      }
    }
  }
  return std::make_unique<NcclCommunicator>(bootstrap, timeout_s);
}

}  // namespace shardtune
