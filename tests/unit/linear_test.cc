// Linear's weight gradient written into an installed gradient slot (as a unit's backward does)
// equals LibTorch's, first as a plain product and then added to what the slot holds.
#include "worker/models/linear.h"

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
  slots[0].tensor = buffer.narrow(0, 3, 24).view({4, 6});
  const at::Tensor slotted = weight.detach().clone().set_requires_grad(true);
  {
    const ScopedGradientSlots installed({slotted}, slots);
    EXPECT_EQ(FindGradientSlot(slotted), &slots[0]);
    EXPECT_EQ(FindGradientSlot(weight), nullptr);
    const auto grads = torch::autograd::grad({(Linear(x, slotted, at::Tensor()) * upstream).sum()}, {slotted}, {},
                                             /*retain_graph=*/false, /*create_graph=*/false, /*allow_unused=*/true);
    EXPECT_FALSE(grads[0].defined());  // nothing to copy: it is in the slot
    EXPECT_TRUE(slots[0].written);
    EXPECT_TRUE(at::allclose(slots[0].tensor, expected, 1e-5, 1e-6));
    (Linear(x, slotted, at::Tensor()) * upstream).sum().backward();
    EXPECT_TRUE(at::allclose(slots[0].tensor, 2 * expected, 1e-5, 1e-6));
  }
  EXPECT_EQ(FindGradientSlot(slotted), nullptr);  // uninstalled with the scope
  EXPECT_EQ(buffer[0].item<float>(), 123.0f);     // only the slot's elements were written
  EXPECT_EQ(buffer[29].item<float>(), 123.0f);
}

}  // namespace
}  // namespace shardtune
