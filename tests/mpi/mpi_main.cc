// main() of the tests that run under mpirun: every rank runs every test in the same order (so
// their collectives match); only rank 0 prints; the run fails if any rank's test failed.
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
  const int failed = RUN_ALL_TESTS();
  at::Tensor failures = at::full({1}, static_cast<int64_t>(failed != 0), at::kLong);
  world.AllReduceSum(failures, shardtune::CollectiveTag{"test results"})->Wait();
  if (world.rank() == 0 && failures.item<int64_t>() > 0) {
    std::fprintf(stderr, "%lld rank(s) had failing tests\n", static_cast<long long>(failures.item<int64_t>()));
  }
  shardtune::testing::g_world.reset();
  return failures.item<int64_t>() == 0 ? 0 : 1;
}
