// The NCCL backend's conformance checks on CUDA tensors, under mpirun. Labeled "gpu": it skips,
// visibly, where this LibTorch has no CUDA or the machine no GPU.
#include <gtest/gtest.h>

#include "sharding/comm/nccl_communicator.h"
#include "world.h"

namespace shardtune {
namespace {

using testing::World;

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA() || !NcclAvailable()) GTEST_SKIP() << "no CUDA device (or a CPU-only LibTorch): NCCL not tested";
    if (CudaDeviceCount() < World().size()) {
      GTEST_SKIP() << World().size() << " ranks need as many GPUs, and this machine has " << CudaDeviceCount();
    }
    if (!nccl_) nccl_ = MakeNcclCommunicator(World(), 60);
  }
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

}  // namespace
}  // namespace shardtune
