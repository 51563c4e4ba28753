#pragma once
// A sweep's parameters as a search space: the documented random draws (docs/sweeps.md, "random"),
// the grid's enumeration order, and the encoding the Gaussian process works in. No LibTorch.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "launcher/sweep/sweep_spec.h"

namespace shardtune::sweep {

// One value per parameter, in the spec's order: a double (log_uniform, uniform), an integer
// (int_uniform) or one of the listed values (choice, grid).
using TrialValues = std::vector<nlohmann::json>;

// The generator of trial `trial`'s draws in stream `stream` (0: the random values; the Bayesian
// strategy's fit and candidates use 1 and 2): mt19937_64 seeded by std::seed_seq{seed's low 32
// bits, seed's high 32 bits, trial, stream}. Each trial has its own, so a proposal depends on
// the seed and the trial's number only, never on how many draws came before (resume).
std::mt19937_64 TrialRng(uint64_t seed, int64_t trial, uint32_t stream);
// A double in [0, 1): the generator's top 53 bits times 2^-53 (exact, the same on every platform,
// unlike std::uniform_real_distribution).
double UnitDraw(std::mt19937_64& rng);

// One unit draw u per parameter, in the spec's order: log_uniform exp(log low + u (log high -
// log low)); uniform low + u (high - low); int_uniform low + floor(u (high - low + 1)); choice and
// grid values[floor(u k)].
TrialValues DrawValues(const std::vector<Parameter>& parameters, std::mt19937_64& rng);

// Point `index` of the grid: the product of each parameter's values (an int_uniform's integers
// from low to high) in nested-loop order, the first parameter the outermost loop and the last
// varying fastest.
TrialValues GridPoint(const std::vector<Parameter>& parameters, int64_t index);

// The Gaussian process's inputs, each in [0, 1]: a range is one feature, (x - low) / (high - low),
// in log space for log_uniform; a choice or grid of k values is k features, one-hot.
size_t FeatureCount(const std::vector<Parameter>& parameters);
std::vector<double> Encode(const std::vector<Parameter>& parameters, const TrialValues& values);
// The values a feature vector stands for: ranges clamped to [0, 1] (integers rounded), each
// one-hot block's largest feature.
TrialValues Decode(const std::vector<Parameter>& parameters, const std::vector<double>& features);

// The values as a JSON object keyed by key path (trials.jsonl), and back (throws Error naming
// the path that is missing).
// "path=value, ...", for people (tables, logs): doubles to 4 significant digits (trials.jsonl
// has them exactly), other values as JSON.
std::string ValuesText(const std::vector<Parameter>& parameters, const TrialValues& values);

nlohmann::json ValuesToJson(const std::vector<Parameter>& parameters, const TrialValues& values);
TrialValues ValuesFromJson(const std::vector<Parameter>& parameters, const nlohmann::json& object);

}  // namespace shardtune::sweep
