#include "sharding/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "common/exit_codes.h"
#include "common/test_knobs.h"
#include "sharding/comm/collective_timeout.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "the NCCL backend needs NCCL 2.18 or later (ncclCommSplit); sharding/CMakeLists.txt leaves older ones out"
#endif

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
    case at::kByte:  // quantized weights' records, gathered (never summed)
      return ncclUint8;
    default:
      Fail(ErrorCode::kInternal, "no NCCL type for {}", c10::toString(tensor.scalar_type()));
  }
}

// Set once a collective of this process has failed or timed out. The process is then going
// down (its caller fails the job, and MPI takes the other ranks down), and NCCL's teardown would
// wait for work that never finishes: ncclCommDestroy flushes pending collectives, and
// ncclCommAbort itself may wait for the peers (NVIDIA/nccl#863).
std::atomic<bool> g_failed{false};

// Throws `Thrown` (CollectiveError, or CollectiveTimeout for a collective past its timeout).
template <typename Thrown = CollectiveError>
[[noreturn]] void FailCollective(const std::string& message) {
  g_failed = true;
  throw Thrown(message);
}

// An NCCL communicator and the stream its collectives run on, shared by every group of the
// same ranks in the same order (and by the Work handles still in flight on it).
struct NcclState {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  NcclState() { ST_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
  NcclState(const NcclState&) = delete;
  NcclState& operator=(const NcclState&) = delete;
  ~NcclState() {
    // After a failure, or while an error unwinds towards the job's end, leave both to the
    // process's exit rather than risk waiting on a peer that is gone.
    if (g_failed || std::uncaught_exceptions() > 0) return;
    if (comm != nullptr) ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
  }
};

// Runs `create` (NCCL's communicator creation, which blocks and has no timeout of its own)
// while a watchdog waits. If it has not returned within the timeout (a peer stalled, or never
// came), the watchdog logs what hung and ends the process: mpirun or srun then end the job.
template <typename Create>
void CreateWithinTimeout(int world_rank, const std::string& group, double timeout_s, Create create) {
  const std::string what = fmt::format("rank {}: creating the NCCL communicator of {}", world_rank, group);
  std::mutex mutex;
  std::condition_variable returned;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mutex);
    if (returned.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return done; })) return;
    spdlog::error("{} did not complete within the collective timeout of {} s", what, timeout_s);
    spdlog::default_logger()->flush();
    std::_Exit(kExitFailed);
  });
  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = true;
    }
    returned.notify_one();
    watchdog.join();
  };
  try {
    create();
  } catch (...) {
    finish();
    throw;
  }
  finish();
}

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
      if (state != cudaErrorNotReady) FailCollective(fmt::format("{} failed: {}", what_, cudaGetErrorString(state)));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(state_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        FailCollective(fmt::format("{} failed: {}", what_, ncclGetErrorString(async)));
      if (std::chrono::steady_clock::now() > deadline)
        FailCollective<CollectiveTimeout>(
            fmt::format("{} did not complete within the collective timeout of {} s", what_, timeout_s_));
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
  // A new NCCL communicator over the ranks of `bootstrap`, from a unique id rank 0 creates.
  NcclCommunicator(Communicator& bootstrap, double timeout_s) : bootstrap_(bootstrap), timeout_s_(timeout_s) {
    ncclUniqueId id;
    if (bootstrap_.rank() == 0) ST_NCCL_CHECK(ncclGetUniqueId(&id));
    // Broadcast as int64 words (the MPI backend has no byte type for collectives).
    at::Tensor words = at::zeros({static_cast<int64_t>((sizeof(id) + 7) / 8)}, at::kLong);
    std::memcpy(words.data_ptr(), &id, sizeof(id));
    bootstrap_.Broadcast(words, 0, CollectiveTag{"nccl unique id"})->Wait();
    std::memcpy(&id, words.data_ptr(), sizeof(id));
    ST_CUDA_CHECK(cudaGetDevice(&device_));
    state_ = std::make_shared<NcclState>();
    CreateWithinTimeout(world_rank(), name(), timeout_s_,
                        [&] { ST_NCCL_CHECK(ncclCommInitRank(&state_->comm, size(), id, rank())); });
  }
  // A group over `bootstrap`'s ranks on an existing NCCL communicator of the same ranks.
  NcclCommunicator(std::unique_ptr<Communicator> bootstrap, double timeout_s, std::shared_ptr<NcclState> state,
                   int device)
      : owned_bootstrap_(std::move(bootstrap)),
        bootstrap_(*owned_bootstrap_),
        timeout_s_(timeout_s),
        state_(std::move(state)),
        device_(device) {}

  int rank() const override { return bootstrap_.rank(); }
  int size() const override { return bootstrap_.size(); }
  int world_rank() const override { return bootstrap_.world_rank(); }
  std::string name() const override { return bootstrap_.name(); }
  at::Device device() const override { return at::Device(at::kCUDA, device_); }

  std::unique_ptr<Work> AllReduceSum(at::Tensor& tensor, const CollectiveTag& tag) override {
    CheckOperand("all_reduce", tensor);
    CountSent(2 * (size() - 1) * static_cast<int64_t>(tensor.nbytes()) / size());
    return Launch("all_reduce", tag, tensor, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), NcclType(tensor), ncclSum, comm,
                           stream);
    });
  }
  std::unique_ptr<Work> ReduceScatterSum(const at::Tensor& input, at::Tensor& output,
                                         const CollectiveTag& tag) override {
    CheckParts("reduce_scatter", input, output);
    CountSent((size() - 1) * static_cast<int64_t>(output.nbytes()));
    return Launch("reduce_scatter", tag, input, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), NcclType(input), ncclSum, comm,
                               stream);
    });
  }
  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output, const CollectiveTag& tag) override {
    CheckParts("all_gather", output, input);
    CountSent((size() - 1) * static_cast<int64_t>(input.nbytes()));
    return Launch("all_gather", tag, output, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllGather(input.data_ptr(), output.data_ptr(), input.numel(), NcclType(input), comm, stream);
    });
  }
  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root, const CollectiveTag& tag) override {
    CheckOperand("broadcast", tensor);
    if (rank() == root) CountSent(static_cast<int64_t>(tensor.nbytes()));
    return Launch("broadcast", tag, tensor, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), NcclType(tensor), root, comm, stream);
    });
  }
  void Barrier(const CollectiveTag& tag) override {
    at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(device()));
    AllReduceSum(one, tag)->Wait();
    ST_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    auto bootstrap = bootstrap_.Split(color, key, name);
    // A group of the same ranks in the same order (the shard group without hybrid sharding)
    // shares this group's communicator: a second one would hold buffers of its own for every
    // channel (hundreds of MiB per GPU at scale). Every rank must take the same branch.
    // SHARDTUNE_TEST_NCCL_SPLIT (TestKnobs::nccl_split) makes every split a real one, so that a
    // single GPU tests it.
    const bool same = bootstrap->size() == size() && bootstrap->rank() == rank();
    at::Tensor differs = at::full({1}, !same || TestKnobs::FromEnvironment().nccl_split ? 1 : 0, at::kLong);
    bootstrap_.AllReduceSum(differs, CollectiveTag{"splitting " + name})->Wait();
    if (differs.item<int64_t>() == 0) {
      return std::make_unique<NcclCommunicator>(std::move(bootstrap), timeout_s_, state_, device_);
    }
    auto state = std::make_shared<NcclState>();
    CreateWithinTimeout(world_rank(), name, timeout_s_,
                        [&] { ST_NCCL_CHECK(ncclCommSplit(state_->comm, color, key, &state->comm, nullptr)); });
    return std::make_unique<NcclCommunicator>(std::move(bootstrap), timeout_s_, std::move(state), device_);
  }

 private:
  template <typename Call>
  std::unique_ptr<Work> Launch(const char* op, const CollectiveTag& tag, const at::Tensor& tensor, Call call) {
    const std::string what = fmt::format("rank {}: {} of {} in {} at step {} ({} elements)", world_rank(), op,
                                         tag.bucket, name(), tag.step, tensor.numel());
    // The collective reads what the compute stream has produced so far.
    cudaEvent_t ready, done;
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(ready, cudaStreamLegacy));
    ST_CUDA_CHECK(cudaStreamWaitEvent(state_->stream, ready, 0));
    cudaEventDestroy(ready);
    const ncclResult_t result = call(state_->comm, state_->stream);
    if (result != ncclSuccess) FailCollective(fmt::format("{} failed: {}", what, ncclGetErrorString(result)));
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(done, state_->stream));
    return std::make_unique<NcclWork>(state_, done, timeout_s_, what,
                                      std::shared_ptr<std::atomic<int64_t>>(times(), &times()->waited_ns));
  }

  std::unique_ptr<Communicator> owned_bootstrap_;  // a split's MPI group
  Communicator& bootstrap_;                        // the MPI group of the same ranks
  double timeout_s_;
  std::shared_ptr<NcclState> state_;
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
