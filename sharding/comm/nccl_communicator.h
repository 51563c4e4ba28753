#pragma once
// Collectives over NCCL on CUDA tensors (built when CUDA and NCCL 2.18 or later are found).
//
// Streams: each NCCL communicator runs its collectives on its own CUDA stream. An operation
// first makes that stream wait for the work already queued on the compute stream (LibTorch's
// default stream, the legacy one, which official LibTorch builds use: shardtune sets no other),
// so it reads finished inputs; Wait() makes the compute stream wait for the operation's
// completion event. The host blocks in Wait() to enforce the timeout: it polls the event and
// NCCL's asynchronous error and, on either, throws CollectiveError naming rank, collective,
// bucket and step. The communicators are then left alone, not destroyed or aborted (either can
// wait on a dead peer): the caller fails the job, which ends every rank.
//
// The NCCL unique id is created by rank 0 and broadcast over `bootstrap` (the MPI group of the
// same ranks); subgroups come from ncclCommSplit, and a split that keeps every rank in place
// shares its parent's communicator. Creating a communicator has no timeout in NCCL: a watchdog
// ends the process if it takes longer than the collective timeout.

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
