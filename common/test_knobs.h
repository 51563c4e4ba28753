#pragma once
// Test knobs: environment variables (SHARDTUNE_TEST_*) that make the worker misbehave on purpose,
// so that tests can reach paths a healthy run never takes. They are read here only, by
// TestKnobs::FromEnvironment(), which callers use once while setting up (never per step), and
// they are listed for users in tests/README.md. Nothing in production sets them.

#include <cstdint>
#include <optional>

namespace shardtune {

struct TestKnobs {
  // SHARDTUNE_TEST_STALL=RANK:STEP: that world rank stops responding (sleeps for an hour) when it
  // reaches that optimizer step (1-based), as a hung GPU or process would, so that the other
  // ranks' collectives time out. Used by tests/e2e/mpi_test.sh (the collective timeout).
  struct Stall {
    int rank = 0;
    int64_t step = 0;
  };
  std::optional<Stall> stall;

  // SHARDTUNE_TEST_NCCL_SPLIT (any value): NcclCommunicator::Split creates a communicator of its
  // own even for a group of the same ranks (which otherwise shares its parent's), so that one GPU
  // exercises ncclCommSplit. Used by tests/mpi/nccl_test.cc, which sets it around one test.
  bool nccl_split = false;

  // SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE=STEP: on every rank, the writer of the checkpoint of that
  // optimizer step (1-based) sleeps for an hour once its rank file is written, before it reports
  // done, so that the checkpoint stays uncommitted (checkpoints/step-STEP.tmp) while a test kills
  // a rank. Used by tests/e2e/mpi_test.sh (kill -9 during an asynchronous checkpoint's write).
  std::optional<int64_t> pause_checkpoint_write;
  // SHARDTUNE_TEST_EXPORT_SHARD_BYTES=N: exported models are split into files of at most N bytes
  // (instead of 5 GB), so that a tiny model is several model-0000K-of-0000N.safetensors files and
  // the parallel export's file assignment is exercised. Used by tests/e2e/cli_test.sh and
  // mpi_test.sh.
  std::optional<uint64_t> export_shard_bytes;

  // Reads the variables now; throws Error naming the variable when a value is malformed.
  static TestKnobs FromEnvironment();
};

}  // namespace shardtune
