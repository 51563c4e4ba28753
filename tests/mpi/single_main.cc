// main() of the same suites on one process, with the single-process communicator.
#include <gtest/gtest.h>

#include "common/logging.h"
#include "world.h"

namespace shardtune::testing {

Communicator& World() {
  static SingleProcessCommunicator world;
  return world;
}

}  // namespace shardtune::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  shardtune::InitLogging("warn", 0);
  return shardtune::testing::ExitCode(RUN_ALL_TESTS());
}
