#include "sharding/comm/mpi_communicator.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "sharding/comm/collective_timeout.h"

namespace shardtune {

namespace {

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

// Every MPI call but MPI_Error_string goes through this: MPI_ERRORS_RETURN is set on the world
// (and so on every communicator split from it), so a failure comes back as a code, and a request
// it should have set is left uninitialized. Reports the statement, file:line and MPI's own
// message, as a CollectiveError (how a failed collective is reported, as by the NCCL backend).
#define ST_MPI_CHECK(stmt)                                                                                            \
  do {                                                                                                                \
    const int st_rc = (stmt);                                                                                         \
    if (st_rc != MPI_SUCCESS)                                                                                         \
      throw CollectiveError(fmt::format("{} failed at {}:{}: {}", #stmt, __FILE__, __LINE__, MpiErrorString(st_rc))); \
  } while (0)

// MPI has no 16-bit float types: sums of bf16 and fp16 go through these user-defined ops.
template <typename T>
void SumOp(void* in, void* inout, int* length, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *length; ++i) b[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

MPI_Op g_bf16_sum = MPI_OP_NULL;
MPI_Op g_fp16_sum = MPI_OP_NULL;

struct TypeAndOp {
  MPI_Datatype type;
  MPI_Op sum;
};

TypeAndOp MpiTypeOf(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return {MPI_FLOAT, MPI_SUM};
    case at::kDouble:
      return {MPI_DOUBLE, MPI_SUM};
    case at::kLong:
      return {MPI_INT64_T, MPI_SUM};
    case at::kByte:  // quantized weights' records, gathered (never summed)
      return {MPI_UINT8_T, MPI_SUM};
    case at::kBFloat16:
      return {MPI_UINT16_T, g_bf16_sum};
    case at::kHalf:
      return {MPI_UINT16_T, g_fp16_sum};
    default:
      Fail(ErrorCode::kInternal, "no MPI type for {}", c10::toString(tensor.scalar_type()));
  }
}

int64_t NanosecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// Runs MPI operations one after another on its own thread. Each operation issues non-blocking
// calls, which are tested until done or until its deadline, then runs what it left to do after
// them (a local sum) on this thread too.
class MpiProgressThread {
 public:
  // What an operation's start returns: its requests, and what runs once they are complete (a
  // local sum), which may start the operation's next phase.
  struct Started {
    Started() = default;
    Started(MPI_Request request) : requests{request} {}  // NOLINT(google-explicit-constructor): one call
    Started(std::vector<MPI_Request> started, std::function<Started()> after)
        : requests(std::move(started)), then(std::move(after)) {}
    std::vector<MPI_Request> requests;
    std::function<Started()> then;
  };
  using Issue = std::function<Started()>;  // starts the operation (on this thread)

  explicit MpiProgressThread(int world_rank) : world_rank_(world_rank), thread_([this] { Loop(); }) {}
  ~MpiProgressThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    thread_.join();
  }

  // Queues `issue`; the future completes when the request does, or holds a CollectiveError.
  // `busy_ns` (if given) gets the time from issue to completion.
  std::future<void> Submit(Issue issue, std::string what, double timeout_s,
                           std::shared_ptr<std::atomic<int64_t>> busy_ns = nullptr) {
    Task task{std::move(issue), std::move(what), timeout_s, {}, std::move(busy_ns)};
    std::future<void> done = task.done.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_one();
    return done;
  }

  // Runs `call` (a blocking MPI call) on this thread and waits for it; with `timeout_s` > 0,
  // at most that long (then throws, naming `what`: the call itself cannot be interrupted, so it
  // must own everything it touches).
  void RunBlocking(std::function<void()> call, const std::string& what = "setup", double timeout_s = 0) {
    std::future<void> done = Submit(
        [call]() {
          call();
          return MPI_REQUEST_NULL;
        },
        what, 0);
    if (timeout_s > 0 && done.wait_for(std::chrono::duration<double>(timeout_s)) != std::future_status::ready) {
      throw CollectiveTimeout(fmt::format("rank {}: {} did not complete within the collective timeout of {} s",
                                          world_rank_, what, timeout_s));
    }
    done.get();
  }

  int world_rank() const { return world_rank_; }

 private:
  struct Task {
    Issue issue;
    std::string what;
    double timeout_s;
    std::promise<void> done;
    std::shared_ptr<std::atomic<int64_t>> busy_ns;
  };

  void Loop() {
    for (;;) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      if (first_failure_) {  // the first failure itself, so that a timeout stays a CollectiveTimeout
        task.done.set_exception(first_failure_);
        continue;
      }
      try {
        const auto start = std::chrono::steady_clock::now();
        Run(task);
        if (task.busy_ns) *task.busy_ns += NanosecondsSince(start);
        task.done.set_value();
      } catch (const CollectiveError&) {
        first_failure_ = std::current_exception();
        task.done.set_exception(first_failure_);
      }
    }
  }

  void Run(Task& task) {
    Started started;
    NamingTask(task, [&] { started = task.issue(); });
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration<double>(task.timeout_s);
    // Poll: spin briefly (short collectives finish in microseconds), then back off to sleeps
    // that leave the cores to the ranks that compute.
    auto pause = std::chrono::microseconds(0);
    for (int flag = 0;;) {
      std::vector<MPI_Request>& requests = started.requests;
      std::erase(requests, MPI_REQUEST_NULL);
      flag = requests.empty();
      if (!flag) {
        NamingTask(task, [&] {
          ST_MPI_CHECK(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag, MPI_STATUSES_IGNORE));
        });
      }
      if (flag) {
        if (!started.then) return;
        NamingTask(task, [&] { started = std::function<Started()>(std::move(started.then))(); });
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now > deadline) {
        throw CollectiveTimeout(
            fmt::format("rank {}: {} did not complete within the collective timeout of {} s "
                        "(another rank is stuck, dead, or issued different collectives)",
                        world_rank_, task.what, task.timeout_s));
      }
      if (now - start > std::chrono::microseconds(200)) {
        pause = std::min(std::chrono::microseconds(500), pause + std::chrono::microseconds(20));
        std::this_thread::sleep_for(pause);
      }
    }
  }

  // Runs `call`; a failed MPI call in it is reported with this rank and the operation it served.
  template <typename F>
  void NamingTask(const Task& task, F call) const {
    try {
      call();
    } catch (const CollectiveError& e) {
      throw CollectiveError(fmt::format("rank {}: {} failed: {}", world_rank_, task.what, e.what()));
    }
  }

  int world_rank_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Task> queue_;
  bool stopping_ = false;
  std::exception_ptr first_failure_;  // set after the first failure: later operations fail at once with it
  std::thread thread_;
};

namespace {

class MpiWork : public Work {
 public:
  MpiWork(std::future<void> done, double timeout_s, std::string what, int rank,
          std::shared_ptr<std::atomic<int64_t>> waited_ns)
      : done_(std::move(done)),
        timeout_s_(timeout_s),
        what_(std::move(what)),
        rank_(rank),
        waited_ns_(std::move(waited_ns)) {}
  void Wait() override {
    if (!done_.valid()) return;
    const auto start = std::chrono::steady_clock::now();
    // The progress thread enforces the deadline; this one only guards against it being stuck
    // inside an MPI call that never returns.
    if (done_.wait_for(std::chrono::duration<double>(timeout_s_ + 30)) != std::future_status::ready) {
      throw CollectiveTimeout(
          fmt::format("rank {}: {} did not complete within the collective timeout of {} s", rank_, what_, timeout_s_));
    }
    *waited_ns_ += NanosecondsSince(start);
    done_.get();
  }

 private:
  std::future<void> done_;
  double timeout_s_;
  std::string what_;
  int rank_;
  std::shared_ptr<std::atomic<int64_t>> waited_ns_;
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s, std::shared_ptr<MpiProgressThread> progress)
      : comm_(comm), name_(std::move(name)), timeout_s_(timeout_s), progress_(std::move(progress)) {
    progress_->RunBlocking([this] {
      ST_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
      ST_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    });
  }
  ~MpiCommunicator() override {
    if (comm_ == MPI_COMM_WORLD) return;
    MPI_Comm comm = comm_;
    try {
      // Logged, not thrown: a throw on the progress thread would count as a failed collective
      // and fail every later one on the runtime, for a group nobody uses any more.
      progress_->RunBlocking([&comm] {
        if (const int rc = MPI_Comm_free(&comm); rc != MPI_SUCCESS)
          spdlog::warn("MPI_Comm_free failed: {}", MpiErrorString(rc));
      });
    } catch (const std::exception&) {
      // After a failed collective the job is being torn down; the group dies with it.
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank() const override { return progress_->world_rank(); }
  std::string name() const override { return name_; }

  std::unique_ptr<Work> AllReduceSum(at::Tensor& tensor, const CollectiveTag& tag) override {
    CheckOperand("all_reduce", tensor);
    const TypeAndOp t = MpiTypeOf(tensor);
    void* data = tensor.data_ptr();
    const int count = Count(tensor);
    CountSent(2 * (size_ - 1) * static_cast<int64_t>(tensor.nbytes()) / size_);
    if (size_ > 1 && tensor.nbytes() >= kPairwiseBytes) {
      // Pairwise, as ReduceScatterSum below, then each rank sends its summed block to every
      // other. Open MPI's MPI_Iallreduce (libnbc) took 1.4 s for 300 MB at 2 ranks, this 0.2 s.
      const int64_t n = tensor.numel(), block = (n + size_ - 1) / size_;
      const at::Tensor flat = tensor.view(-1);
      auto part = [flat, n, block](int r) {
        const int64_t begin = std::min(n, r * block);
        return flat.narrow(0, begin, std::min(n, begin + block) - begin);
      };
      const at::Tensor received = at::empty({size_ - 1, block}, tensor.options());
      return Submit(
          [=, comm = comm_, rank = rank_, size = size_]() -> MpiProgressThread::Started {
            const at::Tensor own = part(rank);
            auto sum_then_share = [=]() -> MpiProgressThread::Started {
              for (int64_t slot = 0; slot < size - 1; ++slot) own.add_(received[slot].narrow(0, 0, own.numel()));
              return {Exchange(
                          comm, rank, size, t.type, [&](int peer) { return part(peer); }, [&](int) { return own; }),
                      nullptr};
            };
            return {Exchange(
                        comm, rank, size, t.type,
                        [&](int peer) { return received[Slot(peer, rank)].narrow(0, 0, own.numel()); },
                        [&](int peer) { return part(peer); }),
                    sum_then_share};
          },
          "all_reduce", tensor, tag);
    }
    return Submit(
        [=, comm = comm_] {
          MPI_Request request;
          ST_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, count, t.type, t.sum, comm, &request));
          return request;
        },
        "all_reduce", tensor, tag);
  }

  std::unique_ptr<Work> ReduceScatterSum(const at::Tensor& input, at::Tensor& output,
                                         const CollectiveTag& tag) override {
    CheckParts("reduce_scatter", input, output);
    const TypeAndOp t = MpiTypeOf(input);
    const int count = Count(output);
    CountSent((size_ - 1) * static_cast<int64_t>(output.nbytes()));
    // Pairwise: each rank sends every other rank that rank's part of `input`, then sums the parts
    // it received into its own (in rank order after its own; each part is summed by one rank).
    // Open MPI's MPI_Ireduce_scatter_block (libnbc) reduces the whole buffer on rank 0 and
    // scatters it from there: measured at 2 ranks and 300 MB, 1.4-1.8 s of rank 0's progress
    // thread against 0.07-0.15 s this way, and that thread shares the cores with the products.
    at::Tensor received = at::empty({size_ - 1, count}, output.options());
    return Submit(
        [=, comm = comm_, rank = rank_, size = size_]() -> MpiProgressThread::Started {
          const at::Tensor flat = input.view(-1);
          return {Exchange(
                      comm, rank, size, t.type, [&](int peer) { return received[Slot(peer, rank)]; },
                      [&](int peer) { return flat.narrow(0, int64_t{peer} * count, count); }),
                  [=]() -> MpiProgressThread::Started {
                    const at::Tensor own = flat.narrow(0, int64_t{rank} * count, count);
                    if (own.data_ptr() != output.data_ptr()) output.view(-1).copy_(own);
                    for (int64_t slot = 0; slot < size - 1; ++slot) output.view(-1).add_(received[slot]);
                    return {};
                  }};
        },
        "reduce_scatter", input, tag);
  }

  std::unique_ptr<Work> AllGather(const at::Tensor& input, at::Tensor& output, const CollectiveTag& tag) override {
    CheckParts("all_gather", output, input);
    const TypeAndOp t = MpiTypeOf(input);
    void* out = output.data_ptr();
    // MPI forbids a send buffer inside the receive buffer: this rank's own part says so instead.
    const bool in_place = input.data_ptr() == static_cast<char*>(out) + rank() * input.nbytes();
    const void* in = in_place ? MPI_IN_PLACE : input.data_ptr();
    const int count = Count(input);
    CountSent((size_ - 1) * static_cast<int64_t>(input.nbytes()));
    return Submit(
        [=, comm = comm_] {
          MPI_Request request;
          ST_MPI_CHECK(MPI_Iallgather(in, count, t.type, out, count, t.type, comm, &request));
          return request;
        },
        "all_gather", output, tag);
  }

  std::unique_ptr<Work> Broadcast(at::Tensor& tensor, int root, const CollectiveTag& tag) override {
    CheckOperand("broadcast", tensor);
    const TypeAndOp t = MpiTypeOf(tensor);
    void* data = tensor.data_ptr();
    const int count = Count(tensor);
    if (rank_ == root) CountSent(static_cast<int64_t>(tensor.nbytes()));
    return Submit(
        [=, comm = comm_] {
          MPI_Request request;
          ST_MPI_CHECK(MPI_Ibcast(data, count, t.type, root, comm, &request));
          return request;
        },
        "broadcast", tensor, tag);
  }

  void Barrier(const CollectiveTag& tag) override {
    at::Tensor none;
    Submit(
        [comm = comm_] {
          MPI_Request request;
          ST_MPI_CHECK(MPI_Ibarrier(comm, &request));
          return request;
        },
        "barrier", none, tag)
        ->Wait();
  }

  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override {
    auto split = std::make_shared<MPI_Comm>(MPI_COMM_NULL);  // outlives a timed-out wait
    progress_->RunBlocking(
        [comm = comm_, color, key, split] { ST_MPI_CHECK(MPI_Comm_split(comm, color, key, split.get())); },
        fmt::format("creating {} from {}", name, name_), timeout_s_);
    return std::make_unique<MpiCommunicator>(*split, name, timeout_s_, progress_);
  }

 private:
  // The tag of the point-to-point messages collectives are built of. Collectives run one at a
  // time on the progress thread, in the same order on every rank, and MPI keeps the order of
  // messages between two ranks: one tag serves them all.
  static constexpr int kPairwiseTag = 0x5354;
  // All-reduces of at least this many bytes go pairwise; smaller ones (a loss, a norm) take
  // MPI's own, whose algorithms suit a few bytes (fewer messages).
  static constexpr size_t kPairwiseBytes = 1 << 20;

  // The slot of `peer`'s part among a rank's received parts (every rank but itself, in order).
  static int64_t Slot(int peer, int rank) { return peer < rank ? peer : peer - 1; }
  // Starts, with every other rank `peer`, a receive into the tensor recv(peer) and a send of the
  // tensor send(peer) (contiguous): the point-to-point exchange the pairwise collectives are made of.
  template <typename Recv, typename Send>
  static std::vector<MPI_Request> Exchange(MPI_Comm comm, int rank, int size, MPI_Datatype type, Recv recv, Send send) {
    std::vector<MPI_Request> requests;
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      const at::Tensor in = recv(peer), out = send(peer);
      requests.push_back(MPI_REQUEST_NULL);
      ST_MPI_CHECK(MPI_Irecv(in.data_ptr(), Count(in), type, peer, kPairwiseTag, comm, &requests.back()));
      requests.push_back(MPI_REQUEST_NULL);
      ST_MPI_CHECK(MPI_Isend(out.data_ptr(), Count(out), type, peer, kPairwiseTag, comm, &requests.back()));
    }
    return requests;
  }

  static int Count(const at::Tensor& tensor) {
    ST_CHECK(tensor.numel() <= INT32_MAX, "MPI count {} exceeds int", tensor.numel());
    return static_cast<int>(tensor.numel());
  }
  std::unique_ptr<Work> Submit(MpiProgressThread::Issue issue, const char* op, const at::Tensor& tensor,
                               const CollectiveTag& tag) {
    std::string what = fmt::format("{} of {} in {} at step {}", op, tag.bucket, name_, tag.step);
    if (tensor.defined()) what += fmt::format(" ({} elements)", tensor.numel());
    auto done = progress_->Submit(std::move(issue), what, timeout_s_,
                                  std::shared_ptr<std::atomic<int64_t>>(times(), &times()->busy_ns));
    return std::make_unique<MpiWork>(std::move(done), timeout_s_, what, progress_->world_rank(),
                                     std::shared_ptr<std::atomic<int64_t>>(times(), &times()->waited_ns));
  }

  MPI_Comm comm_;
  std::string name_;
  double timeout_s_;
  std::shared_ptr<MpiProgressThread> progress_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  ST_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
  if (provided < MPI_THREAD_SERIALIZED) {
    Fail(ErrorCode::kInternal, "this MPI provides thread level {}, shardtune needs MPI_THREAD_SERIALIZED", provided);
  }
  ST_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  // Errors tied to no communicator (MPI_Op_create among them) go to MPI_COMM_SELF's handler (MPI-4).
  ST_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
  ST_MPI_CHECK(MPI_Op_create(&SumOp<c10::BFloat16>, /*commute=*/1, &g_bf16_sum));
  ST_MPI_CHECK(MPI_Op_create(&SumOp<c10::Half>, /*commute=*/1, &g_fp16_sum));
  int rank = 0;
  ST_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  progress_ = std::make_shared<MpiProgressThread>(rank);
}

MpiRuntime::~MpiRuntime() {
  progress_.reset();
  // A destructor must not throw: a failed finalize is logged, and the process ends anyway.
  const int rc = MPI_Finalize();
  if (rc != MPI_SUCCESS) spdlog::warn("MPI_Finalize failed: {}", MpiErrorString(rc));
}

std::unique_ptr<Communicator> MpiRuntime::World(double timeout_s) {
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", timeout_s, progress_);
}

void MpiRuntime::Abort(int exit_code) {
  // MPI_Abort returns only if it failed; the process ends here either way.
  (void)MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

bool MpiRuntime::LaunchedByMpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

}  // namespace shardtune
