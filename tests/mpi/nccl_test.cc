// The NCCL backend's conformance checks on CUDA tensors, under mpirun. Labeled "gpu": it skips
// (exit 77, counted by ctest) where this process sees no GPU, or fewer GPUs than ranks; where
// nvidia-smi lists GPUs enough, a LibTorch or NCCL that cannot use them fails it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "sharding/comm/nccl_communicator.h"
#include "world.h"

namespace shardtune {
namespace {

using testing::World;

// The GPUs this process may use, independently of LibTorch: those nvidia-smi lists, narrowed by
// CUDA_VISIBLE_DEVICES; SHARDTUNE_REQUIRE_GPU=1 says there is at least one.
int VisibleGpus() {
  static const int gpus = [] {
    int listed = 0;
    if (FILE* smi = ::popen("nvidia-smi -L 2>/dev/null", "r")) {
      char line[512];
      while (std::fgets(line, sizeof line, smi)) listed += std::strncmp(line, "GPU", 3) == 0;
      ::pclose(smi);
    }
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible && listed > 0) {
      std::stringstream devices(visible);
      listed = 0;
      for (std::string device; std::getline(devices, device, ',');) listed += !device.empty();
    }
    const char* required = std::getenv("SHARDTUNE_REQUIRE_GPU");
    return required && std::string(required) == "1" ? std::max(listed, 1) : listed;
  }();
  return gpus;
}

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int ranks = World().size(), gpus = VisibleGpus();
    if (!at::hasCUDA() || !NcclAvailable()) {
      if (gpus >= ranks) FAIL() << gpus << " GPU(s) visible (nvidia-smi -L), but this LibTorch has no CUDA or NCCL";
      GTEST_SKIP() << gpus << " GPU(s) visible for " << ranks << " rank(s): NCCL not tested";
    }
    if (CudaDeviceCount() < ranks) {
      if (gpus >= ranks) FAIL() << "nvidia-smi lists " << gpus << " GPU(s), but CUDA sees " << CudaDeviceCount();
      GTEST_SKIP() << ranks << " ranks need as many GPUs, and this machine has " << CudaDeviceCount();
    }
    if (!nccl_) nccl_ = MakeNcclCommunicator(World(), 60);
  }
  // Before MPI finalizes (the world outlives every NCCL group it bootstrapped).
  static void TearDownTestSuite() { nccl_.reset(); }
  static std::unique_ptr<Communicator> nccl_;
  static at::TensorOptions Cuda(at::ScalarType type) { return at::TensorOptions().dtype(type).device(at::kCUDA); }
};
std::unique_ptr<Communicator> NcclTest::nccl_;

TEST_F(NcclTest, AllReduceReduceScatterAllGatherBroadcast) {
  Communicator& c = *nccl_;
  const int n = c.size();
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16, at::kHalf}) {
    at::Tensor t = at::full({1000}, c.rank() + 1, Cuda(type));
    c.AllReduceSum(t, CollectiveTag{"nccl", 1})->Wait();
    EXPECT_TRUE(at::equal(t.cpu().to(at::kDouble), at::full({1000}, n * (n + 1) / 2.0, at::kDouble)));
  }
  const at::Tensor input = at::arange(n * 8, Cuda(at::kFloat)) + 100.0 * c.rank();
  at::Tensor output = at::empty({8}, Cuda(at::kFloat));
  c.ReduceScatterSum(input, output, CollectiveTag{"nccl", 2})->Wait();
  const at::Tensor expected = (at::arange(8, at::kFloat) + c.rank() * 8) * n + 100.0 * (n * (n - 1) / 2.0);
  EXPECT_TRUE(at::equal(output.cpu(), expected));
  at::Tensor gathered = at::empty({3 * n}, Cuda(at::kFloat));
  c.AllGather(at::full({3}, c.rank(), Cuda(at::kFloat)), gathered, CollectiveTag{"nccl", 3})->Wait();
  for (int r = 0; r < n; ++r) EXPECT_EQ(gathered[3 * r].item<float>(), r);
  at::Tensor b = at::full({4}, c.rank() == 0 ? 7.0 : 0.0, Cuda(at::kFloat));
  c.Broadcast(b, 0, CollectiveTag{"nccl", 4})->Wait();
  EXPECT_EQ(b.sum().item<float>(), 28.0f);
  c.Barrier(CollectiveTag{"nccl", 5});
}

// Subgroups as the engine builds them: the whole world again (which shares the world's
// communicator unless SHARDTUNE_TEST_NCCL_SPLIT asks for a real split) and the even and odd
// ranks (a communicator of their own from ncclCommSplit, at np 2 and more); each sums over its
// own ranks only, and the world still works after.
void ExpectSplitGroupsSumOverTheirOwnRanks(Communicator& c) {
  const int n = c.size(), r = c.rank();
  auto whole = c.Split(0, r, "whole");
  auto parity = c.Split(r % 2, r, "parity");
  ASSERT_EQ(whole->size(), n);
  ASSERT_EQ(parity->size(), (n - r % 2 + 1) / 2);
  at::Tensor a = at::full({5}, r + 1, at::TensorOptions().dtype(at::kFloat).device(c.device()));
  whole->AllReduceSum(a, CollectiveTag{"whole", 1})->Wait();
  EXPECT_EQ(a[0].item<float>(), n * (n + 1) / 2.0f);
  at::Tensor b = at::full({5}, r + 1, at::TensorOptions().dtype(at::kFloat).device(c.device()));
  parity->AllReduceSum(b, CollectiveTag{"parity", 1})->Wait();
  float parity_sum = 0;
  for (int q = r % 2; q < n; q += 2) parity_sum += q + 1;
  EXPECT_EQ(b[4].item<float>(), parity_sum);
  at::Tensor d = at::ones({3}, at::TensorOptions().dtype(at::kFloat).device(c.device()));
  c.AllReduceSum(d, CollectiveTag{"world", 2})->Wait();
  EXPECT_EQ(d.sum().item<float>(), 3.0f * n);
}

TEST_F(NcclTest, SplitGroupsSumOverTheirOwnRanks) { ExpectSplitGroupsSumOverTheirOwnRanks(*nccl_); }

TEST_F(NcclTest, SplitsOfTheSameRanksWorkAsCommunicatorsOfTheirOwn) {
  setenv("SHARDTUNE_TEST_NCCL_SPLIT", "1", 1);
  ExpectSplitGroupsSumOverTheirOwnRanks(*nccl_);
  unsetenv("SHARDTUNE_TEST_NCCL_SPLIT");
}

// Operands the contract rules out fail before NCCL sees them (NCCL would read or write past a
// buffer), naming the collective and the group.
TEST_F(NcclTest, WrongOperandsAreRefusedBeforeTheCollective) {
  Communicator& c = *nccl_;
  at::Tensor output = at::empty({4}, Cuda(at::kFloat));
  const at::Tensor short_input = at::ones({4 * c.size() - 1}, Cuda(at::kFloat));
  EXPECT_THROW(c.ReduceScatterSum(short_input, output, CollectiveTag{"bad"}), Error);
  at::Tensor on_cpu = at::ones({4});
  EXPECT_THROW(c.AllReduceSum(on_cpu, CollectiveTag{"bad"}), Error);
  at::Tensor gathered = at::empty({4 * c.size()}, Cuda(at::kBFloat16));
  EXPECT_THROW(c.AllGather(at::ones({4}, Cuda(at::kFloat)), gathered, CollectiveTag{"bad"}), Error);
}

}  // namespace
}  // namespace shardtune
