#pragma once
// Comparing a training run with its reference, shared by the ZeRO and PEFT equivalence tests.

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace shardtune::testing {

// The step and evaluation records of RUN/metrics.jsonl (not the load record each attempt begins
// with: timings and bytes read, which differ by world size and stage by design).
inline std::vector<nlohmann::json> ReadMetrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line);
    if (!record.contains("load")) lines.push_back(std::move(record));
  }
  return lines;
}

// The loss of every step equals the reference's (rtol 1e-5, atol 1e-6).
inline void ExpectSameLosses(const std::filesystem::path& run, const std::filesystem::path& reference) {
  const auto a = ReadMetrics(run), b = ReadMetrics(reference);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].contains("loss")) continue;
    const double x = a[i]["loss"].get<double>(), y = b[i]["loss"].get<double>();
    EXPECT_NEAR(x, y, 1e-6 + 1e-5 * std::abs(y)) << "step " << i + 1;
  }
}

}  // namespace shardtune::testing
