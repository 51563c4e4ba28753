#include "world.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

namespace shardtune::testing {

std::filesystem::path SharedScratchDir(const std::string& name) {
  // Rank 0 names it, everyone learns the name: a broadcast of its bytes.
  at::Tensor text = at::zeros({512}, at::kLong);
  if (World().rank() == 0) {
    const auto path = std::filesystem::temp_directory_path() / fmt::format("shardtune-{}-{}", name, ::getpid());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
    const std::string s = path.string();
    for (size_t i = 0; i < s.size() && i < 511; ++i) text[static_cast<int64_t>(i)] = static_cast<int64_t>(s[i]);
  }
  World().Broadcast(text, 0, CollectiveTag{"scratch dir"})->Wait();
  std::string path;
  for (int64_t i = 0; i < 512 && text[i].item<int64_t>() != 0; ++i)
    path.push_back(static_cast<char>(text[i].item<int64_t>()));
  return path;
}

int ExitCode(int run_all_tests_result) {
  const ::testing::UnitTest& tests = *::testing::UnitTest::GetInstance();
  const bool all_skipped = tests.test_to_run_count() > 0 && tests.skipped_test_count() == tests.test_to_run_count();
  // Ranks that failed, and ranks on which every test skipped.
  at::Tensor counts =
      at::tensor(std::vector<int64_t>{run_all_tests_result != 0 ? 1 : 0, all_skipped ? 1 : 0}, at::kLong);
  World().AllReduceSum(counts, CollectiveTag{"test results"})->Wait();
  const int64_t failed = counts[0].item<int64_t>(), skipped = counts[1].item<int64_t>();
  if (failed > 0) {
    if (World().rank() == 0) std::fprintf(stderr, "%lld rank(s) had failing tests\n", static_cast<long long>(failed));
    return 1;
  }
  return skipped == World().size() ? 77 : 0;
}

}  // namespace shardtune::testing
