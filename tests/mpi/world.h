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

// The exit code of a test binary, from RUN_ALL_TESTS()'s result on every rank (a collective:
// every rank calls it): 1 if a test failed on any rank; 77, which the ctest tests declare as
// SKIP_RETURN_CODE, if every test that ran was skipped on every rank (no GPU, no fixture), so
// that ctest counts the run as skipped rather than passed; 0 otherwise.
int ExitCode(int run_all_tests_result);

}  // namespace shardtune::testing
