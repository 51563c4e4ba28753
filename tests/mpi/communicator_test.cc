// The conformance suite every Communicator passes: run on one process, and under mpirun with
// 2 and 4 ranks on MPI. Values are chosen so every rank can compute the expected result.
#include "sharding/comm/communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "world.h"

namespace shardtune {
namespace {

using testing::World;

double TriangleSum(int n) { return n * (n + 1) / 2.0; }  // sum of rank + 1 over ranks

TEST(Communicator, AllReduceSumsEveryDtype) {
  Communicator& world = World();
  const int n = world.size();
  for (const at::ScalarType type : {at::kFloat, at::kDouble, at::kLong, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(type));
    at::Tensor t = at::full({1000}, world.rank() + 1, at::TensorOptions().dtype(type));
    world.AllReduceSum(t, CollectiveTag{"conformance", 1})->Wait();
    EXPECT_TRUE(at::equal(t.to(at::kDouble), at::full({1000}, TriangleSum(n), at::kDouble)));
  }
}

TEST(Communicator, ReduceScatterGivesEachRankItsSummedSlice) {
  Communicator& world = World();
  const int n = world.size();
  const int64_t chunk = 37;  // not a multiple of anything in particular
  // input[i] = 1000 * rank + i, so slice r of the sum is sum_k (1000 k + r * chunk + j).
  const at::Tensor input = at::arange(n * chunk, at::kFloat) + 1000.0 * world.rank();
  at::Tensor output = at::empty({chunk}, at::kFloat);
  world.ReduceScatterSum(input, output, CollectiveTag{"conformance", 2})->Wait();
  const at::Tensor expected = (at::arange(chunk, at::kFloat) + world.rank() * chunk) * n + 1000.0 * (n * (n - 1) / 2.0);
  EXPECT_TRUE(at::equal(output, expected));
}

// Large operands take the MPI backend's pairwise algorithms (a megabyte and more for an
// all-reduce; every reduce-scatter): element by element, in 16-bit types too, with an element
// count that does not divide among the ranks (the last ranks' blocks are shorter or empty).
TEST(Communicator, LargeAllReduceAndReduceScatterSumEveryElement) {
  Communicator& world = World();
  const int n = world.size();
  const int64_t count = (int64_t{1} << 20) / 4 + 7;  // 1 MiB of floats and 7 more
  at::Tensor t = at::arange(count, at::kLong).remainder(1000).to(at::kFloat) + 1000.0 * world.rank();
  world.AllReduceSum(t, CollectiveTag{"large", 1})->Wait();
  const at::Tensor expected =
      at::arange(count, at::kLong).remainder(1000).to(at::kFloat) * n + 1000.0 * (n * (n - 1) / 2.0);
  EXPECT_TRUE(at::equal(t, expected));
  at::Tensor half = at::full({2 * count}, world.rank() + 1, at::kBFloat16);
  world.AllReduceSum(half, CollectiveTag{"large", 2})->Wait();
  EXPECT_TRUE(at::equal(half, at::full({2 * count}, TriangleSum(n), at::kBFloat16)));
  const int64_t chunk = count / 4;
  const at::Tensor input = at::full({n * chunk}, world.rank() + 1, at::kBFloat16);
  at::Tensor output = at::empty({chunk}, at::kBFloat16);
  world.ReduceScatterSum(input, output, CollectiveTag{"large", 3})->Wait();
  EXPECT_TRUE(at::equal(output, at::full({chunk}, TriangleSum(n), at::kBFloat16)));
}

TEST(Communicator, AllGatherConcatenatesInRankOrder) {
  Communicator& world = World();
  const int n = world.size();
  const at::Tensor input = at::full({5}, world.rank(), at::kBFloat16);
  at::Tensor output = at::empty({5 * n}, at::kBFloat16);
  world.AllGather(input, output, CollectiveTag{"conformance", 3})->Wait();
  for (int r = 0; r < n; ++r) EXPECT_TRUE(at::equal(output.narrow(0, 5 * r, 5), at::full({5}, r, at::kBFloat16))) << r;
}

TEST(Communicator, BroadcastFromTheLastRank) {
  Communicator& world = World();
  const int root = world.size() - 1;
  at::Tensor t = at::full({3}, world.rank() == root ? 42.0 : -1.0, at::kFloat);
  world.Broadcast(t, root, CollectiveTag{"conformance", 4})->Wait();
  EXPECT_TRUE(at::equal(t, at::full({3}, 42.0, at::kFloat)));
  world.Barrier(CollectiveTag{"conformance", 4});
}

// Operands the contract rules out fail before anything is issued, naming the collective (a
// backend would otherwise read or write past a buffer).
TEST(Communicator, RefusesOperandsOfTheWrongSizeDtypeOrLayout) {
  Communicator& world = World();
  const int n = world.size();
  at::Tensor output = at::empty({4}, at::kFloat);
  EXPECT_THROW(world.ReduceScatterSum(at::ones({4 * n + 1}, at::kFloat), output, CollectiveTag{"bad"}), Error);
  at::Tensor gathered = at::empty({4 * n}, at::kBFloat16);
  EXPECT_THROW(world.AllGather(at::ones({4}, at::kFloat), gathered, CollectiveTag{"bad"}), Error);
  at::Tensor strided = at::ones({4, 2}, at::kFloat).t();
  EXPECT_THROW(world.AllReduceSum(strided, CollectiveTag{"bad"}), Error);
  world.Barrier(CollectiveTag{"after refusals"});  // nothing was issued: the group is still in step
}

TEST(Communicator, ManyOperationsInFlightCompleteInAnyWaitOrder) {
  Communicator& world = World();
  std::vector<at::Tensor> tensors;
  std::vector<std::unique_ptr<Work>> works;
  for (int i = 0; i < 8; ++i)
    tensors.push_back(at::full({4096}, static_cast<double>(i * (world.rank() + 1)), at::kFloat));
  for (auto& t : tensors) works.push_back(world.AllReduceSum(t, CollectiveTag{"overlap", 5}));
  for (int i = 7; i >= 0; --i) works[i]->Wait();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(tensors[i][0].item<double>(), i * TriangleSum(world.size())) << i;
}

TEST(Communicator, SplitMakesIndependentGroups) {
  Communicator& world = World();
  const int n = world.size();
  const int group_size = n % 2 == 0 ? 2 : 1;
  auto group = world.Split(world.rank() / group_size, world.rank(), "pairs");
  EXPECT_EQ(group->size(), group_size);
  EXPECT_EQ(group->rank(), world.rank() % group_size);
  at::Tensor t = at::full({2}, world.rank(), at::kFloat);
  group->AllReduceSum(t, CollectiveTag{"pairs", 6})->Wait();
  const int first = world.rank() / group_size * group_size;
  double expected = 0;
  for (int r = first; r < first + group_size; ++r) expected += r;
  EXPECT_EQ(t[0].item<double>(), expected);
}

TEST(Communicator, CountsBytesAsRingAlgorithmsSendThem) {
  Communicator& world = World();
  const int n = world.size();
  const int64_t before = world.bytes_sent();
  at::Tensor t = at::zeros({1000 * n}, at::kFloat);
  world.AllReduceSum(t, CollectiveTag{"bytes", 7})->Wait();
  EXPECT_EQ(world.bytes_sent() - before, 2 * (n - 1) * 4000);
}

TEST(Communicator, TimesCollectivesInFlightAndWaitedFor) {
  Communicator& world = World();
  if (world.size() == 1) GTEST_SKIP() << "one rank: collectives are local copies, with nothing to time";
  const CommStats before = world.stats();
  at::Tensor t = at::ones({1 << 16}, at::kFloat);
  // Rank 0 arrives late: every other rank's Wait() is exposed for about that long.
  if (world.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  world.AllReduceSum(t, CollectiveTag{"timed", 1})->Wait();
  const CommStats after = world.stats();
  const double busy = after.busy_s - before.busy_s, waited = after.waited_s - before.waited_s;
  EXPECT_GT(busy, 0);
  if (world.rank() != 0) {
    EXPECT_GT(waited, 0.1);
    EXPECT_GT(busy, 0.1);
  }
  // The wait is the waiting rank's: rank 0, which found the others there, waited less than any.
  at::Tensor all_waited = at::zeros({world.size()}, at::kDouble);
  all_waited[world.rank()] = waited;
  world.AllReduceSum(all_waited, CollectiveTag{"timed", 2})->Wait();
  for (int r = 1; r < world.size(); ++r) EXPECT_LT(all_waited[0].item<double>(), all_waited[r].item<double>()) << r;
}

}  // namespace
}  // namespace shardtune
