// Linear's and Embedding's weight gradients written into an installed gradient slot (as a unit's
// backward does) equal LibTorch's, first written over what the buffer held and then added to it;
// without a slot they come back through autograd.
#include "worker/models/weight_ops.h"

#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "sharding/gradient_slots.h"

namespace shardtune {
namespace {

TEST(Linear, WritesTheWeightGradientIntoItsSlotOrReturnsIt) {
  at::manual_seed(7);
  const at::Tensor x = at::randn({2, 5, 6}), bias = at::randn({4}).set_requires_grad(true);
  const at::Tensor weight = at::randn({4, 6}).set_requires_grad(true);
  const at::Tensor upstream = at::randn({2, 5, 4});
  const at::Tensor reference_weight = weight.detach().clone().set_requires_grad(true);
  const at::Tensor reference_x = x.clone().set_requires_grad(true);
  (at::linear(reference_x, reference_weight, bias.detach()) * upstream).sum().backward();
  const at::Tensor expected = reference_weight.grad();

  // No slot: the gradient comes back through autograd, as LibTorch's.
  const at::Tensor leaf_x = x.clone().set_requires_grad(true);
  (Linear(leaf_x, weight, bias) * upstream).sum().backward();
  EXPECT_TRUE(at::allclose(weight.grad(), expected, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(leaf_x.grad(), reference_x.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(bias.grad(), upstream.sum(at::IntArrayRef{0, 1}), 1e-5, 1e-6));

  // With a slot: written there (over whatever the buffer held), then added on the second use.
  std::vector<GradientSlot> slots(1);
  const at::Tensor buffer = at::full({30}, 123.0f);
  slots[0].gradient = buffer.narrow(0, 3, 24).view({4, 6});
  const at::Tensor slotted = weight.detach().clone().set_requires_grad(true);
  slots[0].parameter = slotted;
  {
    const ScopedGradientSlots installed(slots);
    EXPECT_EQ(FindGradientSlot(slotted), &slots[0]);
    EXPECT_EQ(FindGradientSlot(weight), nullptr);
    const auto grads = torch::autograd::grad({(Linear(x, slotted, at::Tensor()) * upstream).sum()}, {slotted}, {},
                                             /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
    EXPECT_FALSE(grads[0].defined());  // nothing to copy: it is in the slot
    EXPECT_TRUE(slots[0].written);
    EXPECT_TRUE(at::allclose(slots[0].gradient, expected, 1e-5, 1e-6));
    (Linear(x, slotted, at::Tensor()) * upstream).sum().backward();
    EXPECT_TRUE(at::allclose(slots[0].gradient, 2 * expected, 1e-5, 1e-6));
  }
  EXPECT_EQ(FindGradientSlot(slotted), nullptr);  // uninstalled with the scope
  EXPECT_EQ(buffer[0].item<float>(), 123.0f);     // only the slot's elements were written
  EXPECT_EQ(buffer[29].item<float>(), 123.0f);
}

TEST(Embedding, ScattersTheWeightGradientIntoItsSlotOrReturnsIt) {
  at::manual_seed(8);
  const at::Tensor ids = at::tensor(std::vector<int64_t>{3, 0, 3, 5, 1, 0}).view({2, 3});
  const at::Tensor upstream = at::randn({2, 3, 4});
  const int64_t padding = 0;  // its rows get no gradient
  const at::Tensor reference = at::randn({7, 4}).set_requires_grad(true);
  (at::embedding(reference, ids, padding) * upstream).sum().backward();
  const at::Tensor expected = reference.grad();

  const at::Tensor weight = reference.detach().clone().set_requires_grad(true);
  const at::Tensor out = Embedding(weight, ids, padding);
  EXPECT_TRUE(at::equal(out, at::embedding(reference.detach(), ids, padding)));
  (out * upstream).sum().backward();
  EXPECT_TRUE(at::allclose(weight.grad(), expected, 1e-6, 1e-7));

  std::vector<GradientSlot> slots(1);
  slots[0].gradient = at::full({7, 4}, 55.0f);  // a buffer's stale contents, to be overwritten
  const at::Tensor slotted = reference.detach().clone().set_requires_grad(true);
  slots[0].parameter = slotted;
  const ScopedGradientSlots installed(slots);
  (Embedding(slotted, ids, padding) * upstream).sum().backward();
  EXPECT_FALSE(slotted.grad().defined());
  EXPECT_TRUE(slots[0].written);
  EXPECT_TRUE(at::allclose(slots[0].gradient, expected, 1e-6, 1e-7));
  (Embedding(slotted, ids, padding) * upstream).sum().backward();
  EXPECT_TRUE(at::allclose(slots[0].gradient, 2 * expected, 1e-6, 1e-7));
}

}  // namespace
}  // namespace shardtune
