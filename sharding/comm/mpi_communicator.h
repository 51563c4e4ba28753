#pragma once
// Collectives over MPI on CPU tensors. All MPI calls after MPI_Init run on one progress thread
// shared by every group of the process: the training thread enqueues an operation and goes on
// computing while that thread issues the non-blocking MPI call and drives it to completion
// (Open MPI progresses non-blocking collectives only inside MPI calls, so a thread that polls
// is what makes the overlap real). Operations run one at a time in issue order, which is the
// same order on every rank, so they always match.

#include <memory>
#include <string>

#include "sharding/comm/communicator.h"

namespace shardtune {

class MpiProgressThread;

// MPI for this process: MPI_Init_thread (needs MPI_THREAD_SERIALIZED) on construction,
// MPI_Finalize on destruction. One per process.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // The world group; `timeout_s` bounds every collective of it and of groups split from it.
  std::unique_ptr<Communicator> World(double timeout_s);

  // Ends every rank of the job at once (after a failure on this one); never returns.
  [[noreturn]] static void Abort(int exit_code);

  // Whether this process was started by an MPI launcher (mpirun, srun with PMI).
  static bool LaunchedByMpi();

 private:
  std::shared_ptr<MpiProgressThread> progress_;
};

}  // namespace shardtune
