#pragma once
// Collectives over NCCL on CUDA tensors (built when CUDA and NCCL are found).
//
// Streams: each group runs its collectives on its own CUDA stream. An operation first makes
// that stream wait for the work already queued on the compute stream (LibTorch's default
// stream), so it reads finished inputs; Wait() makes the compute stream wait for the
// operation's completion event. The host only blocks in Wait() to enforce the timeout: it polls
// the event and NCCL's asynchronous error, and on timeout aborts the communicator and throws
// CollectiveError naming rank, collective, bucket and step.
//
// The NCCL unique id is created by rank 0 and broadcast over `bootstrap` (the MPI group of the
// same ranks), which also serves Split.

#include <memory>

#include "sharding/comm/communicator.h"

namespace shardtune {

// Whether this build has NCCL, and this process sees a CUDA device.
bool NcclAvailable();
// The CUDA devices this process sees (0 where there is no driver).
int CudaDeviceCount();

// A group over the same ranks as `bootstrap` (which must outlive it).
std::unique_ptr<Communicator> MakeNcclCommunicator(Communicator& bootstrap, double timeout_s);

}  // namespace shardtune
