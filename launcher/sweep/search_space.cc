#include "launcher/sweep/search_space.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace shardtune::sweep {

namespace {

size_t Width(const Parameter& p) { return p.IsRange() ? 1 : p.values.size(); }

double ToUnit(const Parameter& p, double x) {
  if (p.distribution == Distribution::kLogUniform)
    return (std::log(x) - std::log(p.low)) / (std::log(p.high) - std::log(p.low));
  return (x - p.low) / (p.high - p.low);
}

nlohmann::json FromUnit(const Parameter& p, double u) {
  u = std::clamp(u, 0.0, 1.0);
  switch (p.distribution) {
    case Distribution::kLogUniform:
      return std::clamp(std::exp(std::log(p.low) + u * (std::log(p.high) - std::log(p.low))), p.low, p.high);
    case Distribution::kIntUniform:
      return static_cast<int64_t>(std::llround(p.low + u * (p.high - p.low)));
    default:
      return p.low + u * (p.high - p.low);
  }
}

}  // namespace

std::mt19937_64 TrialRng(uint64_t seed, int64_t trial, uint32_t stream) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(trial),
                    stream};
  return std::mt19937_64(seq);
}

double UnitDraw(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

TrialValues DrawValues(const std::vector<Parameter>& parameters, std::mt19937_64& rng) {
  TrialValues values;
  for (const Parameter& p : parameters) {
    const double u = UnitDraw(rng);
    switch (p.distribution) {
      case Distribution::kLogUniform:
        values.push_back(
            std::clamp(std::exp(std::log(p.low) + u * (std::log(p.high) - std::log(p.low))), p.low, p.high));
        break;
      case Distribution::kUniform:
        values.push_back(p.low + u * (p.high - p.low));
        break;
      case Distribution::kIntUniform:
        values.push_back(static_cast<int64_t>(p.low) + static_cast<int64_t>(std::floor(u * (p.high - p.low + 1))));
        break;
      default:
        values.push_back(p.values[static_cast<size_t>(std::floor(u * static_cast<double>(p.values.size())))]);
    }
  }
  return values;
}

TrialValues GridPoint(const std::vector<Parameter>& parameters, int64_t index) {
  TrialValues values(parameters.size());
  for (size_t i = parameters.size(); i-- > 0;) {
    const Parameter& p = parameters[i];
    ST_CHECK(!p.IsContinuous(), "a continuous range in a grid ({})", p.path);
    const int64_t count = p.distribution == Distribution::kIntUniform ? static_cast<int64_t>(p.high - p.low) + 1
                                                                      : int64_t(p.values.size());
    const int64_t digit = index % count;
    index /= count;
    values[i] = p.distribution == Distribution::kIntUniform ? nlohmann::json(static_cast<int64_t>(p.low) + digit)
                                                            : p.values[static_cast<size_t>(digit)];
  }
  return values;
}

size_t FeatureCount(const std::vector<Parameter>& parameters) {
  size_t count = 0;
  for (const Parameter& p : parameters) count += Width(p);
  return count;
}

std::vector<double> Encode(const std::vector<Parameter>& parameters, const TrialValues& values) {
  std::vector<double> features;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const Parameter& p = parameters[i];
    if (p.IsRange()) {
      features.push_back(std::clamp(ToUnit(p, values[i].get<double>()), 0.0, 1.0));
      continue;
    }
    for (const nlohmann::json& v : p.values) features.push_back(v == values[i] ? 1.0 : 0.0);
  }
  return features;
}

TrialValues Decode(const std::vector<Parameter>& parameters, const std::vector<double>& features) {
  TrialValues values;
  size_t at = 0;
  for (const Parameter& p : parameters) {
    if (p.IsRange()) {
      values.push_back(FromUnit(p, features[at++]));
      continue;
    }
    const auto begin = features.begin() + static_cast<std::ptrdiff_t>(at);
    const auto best = std::max_element(begin, begin + static_cast<std::ptrdiff_t>(p.values.size()));
    values.push_back(p.values[static_cast<size_t>(best - begin)]);
    at += p.values.size();
  }
  return values;
}

nlohmann::json ValuesToJson(const std::vector<Parameter>& parameters, const TrialValues& values) {
  nlohmann::json object = nlohmann::json::object();
  for (size_t i = 0; i < parameters.size(); ++i) object[parameters[i].path] = values[i];
  return object;
}

std::string ValuesText(const std::vector<Parameter>& parameters, const TrialValues& values) {
  std::string text;
  for (size_t i = 0; i < parameters.size() && i < values.size(); ++i) {
    const nlohmann::json& v = values[i];
    text += fmt::format("{}{}={}", i ? ", " : "", parameters[i].path,
                        v.is_number_float() ? fmt::format("{:.4g}", v.get<double>()) : v.dump());
  }
  return text;
}

TrialValues ValuesFromJson(const std::vector<Parameter>& parameters, const nlohmann::json& object) {
  TrialValues values;
  for (const Parameter& p : parameters) {
    if (!object.is_object() || !object.contains(p.path))
      Fail(ErrorCode::kDataLoss, "the trial's values have no '{}' (written by another sweep spec?)", p.path);
    const nlohmann::json& v = object.at(p.path);
    if (p.IsRange() && !v.is_number())
      Fail(ErrorCode::kDataLoss, "the trial's value of '{}' is {}, not a number", p.path, v.dump());
    values.push_back(v);
  }
  return values;
}

}  // namespace shardtune::sweep
