// main() of the tests that run under mpirun: every rank runs every test in the same order (so
// their collectives match); only rank 0 prints; the run fails if any rank's test failed, and
// exits 77 (skipped) if every test skipped (world.h's ExitCode).
#include <gtest/gtest.h>

#include <filesystem>

#include "common/logging.h"
#include "sharding/comm/mpi_communicator.h"
#include "world.h"

namespace shardtune::testing {
namespace {
std::unique_ptr<Communicator> g_world;
}  // namespace

Communicator& World() { return *g_world; }

}  // namespace shardtune::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  shardtune::MpiRuntime mpi(&argc, &argv);
  shardtune::testing::g_world = mpi.World(/*timeout_s=*/120);
  auto& world = *shardtune::testing::g_world;
  shardtune::InitLogging("warn", world.rank());
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int code = shardtune::testing::ExitCode(RUN_ALL_TESTS());
  shardtune::testing::g_world.reset();
  return code;
}
