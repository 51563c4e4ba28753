#include "worker/data/mixture.h"

#include <cmath>
#include <random>

#include "common/error.h"
#include "worker/data/token_dataset.h"

namespace shardtune {

std::vector<double> MixtureProbabilities(const std::vector<int64_t>& sizes, const std::vector<double>& weights,
                                         double temperature) {
  std::vector<double> p(sizes.size());
  double sum = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    p[i] = temperature > 0 ? std::pow(static_cast<double>(sizes[i]), 1.0 / temperature) : weights[i];
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  return p;
}

std::vector<int64_t> MixtureOrder(const std::vector<TaskRange>& tasks, int64_t total, uint64_t seed, int64_t epoch) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL ^ (static_cast<uint64_t>(epoch) * 0xBF58476D1CE4E5B9ULL + 0x5A17));
  std::vector<std::vector<int64_t>> orders(tasks.size());
  std::vector<size_t> cursor(tasks.size(), 0);
  std::vector<int64_t> cycles(tasks.size(), 0);
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(total));
  for (int64_t slot = 0; slot < total; ++slot) {
    // Inverse-CDF draw on our own uniform: the same sequence on every standard library.
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    size_t t = 0;
    for (double cumulative = tasks[0].probability; t + 1 < tasks.size() && u >= cumulative;
         cumulative += tasks[++t].probability) {
    }
    if (cursor[t] == orders[t].size()) {
      orders[t] = EpochOrder(tasks[t].size, seed + 7919 * (t + 1), epoch * 1000003 + cycles[t]++, /*shuffle=*/true);
      cursor[t] = 0;
    }
    order.push_back(tasks[t].begin + orders[t][cursor[t]++]);
  }
  return order;
}

}  // namespace shardtune
