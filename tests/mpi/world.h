#pragma once
// The communicator the tests in this folder run on: the MPI world under mpirun (mpi_main.cc), or
// a single process (single_main.cc), so one conformance suite covers every backend.

#include <filesystem>
#include <string>

#include "sharding/comm/communicator.h"

namespace shardtune::testing {

Communicator& World();

// A directory all ranks share for this test, made by rank 0 and removed after the run.
std::filesystem::path SharedScratchDir(const std::string& name);

}  // namespace shardtune::testing
