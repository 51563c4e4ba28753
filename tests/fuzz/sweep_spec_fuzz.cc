// The sweep spec (YAML) as `shardtune sweep` reads it, with a base job spec: the input is the
// sweep file, optionally followed by "\n--base--\n" and the base's text (without one, a minimal
// valid base). A sweep that parses must then propose trials whose jobs either validate or are
// refused with a SpecError, and its grid must enumerate exactly GridSize points.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"
#include "launcher/sweep/sweep_search.h"
#include "launcher/sweep/sweep_spec.h"
#include "launcher/sweep/trial_job.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr char kDefaultBase[] =
    "name: base\nmodel: {path: /m, task: sequence_classification}\nmethod: {type: lora}\n"
    "data: {train: /d.jsonl, format: classification, validation_split: 0.1}\n"
    "training: {max_steps: 100, eval_every: 10}\noutput: {dir: /o}\n";

// The trials a fuzz input may propose: enough to exercise the Bayesian strategy's GP (it starts
// after max(5, parameters + 1) random points), few enough to stay fast.
constexpr int kMaxProposals = 8;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardtune;
  const auto parts = fuzz::Split(fuzz::AsText(data, size), "\n--base--\n", 2);
  sweep::SweepOptions options;
  options.job.check_files = false;  // what the bytes say, not what this machine holds
  options.base_text = parts.size() == 2 ? std::string(parts[1]) : std::string(kDefaultBase);
  sweep::SweepSpec spec;
  try {
    spec = sweep::ParseSweepSpec(std::string(parts[0]), "sweep.yaml", "/fuzz", options);
  } catch (const Error&) {
    return 0;
  }
  if (spec.parameters.size() > 16) return 0;  // a GP over hundreds of inputs is slow, not wrong
  sweep::SweepSearch search(spec, "");
  int proposed = 0;
  for (; proposed < kMaxProposals; ++proposed) {
    const auto proposal = search.Propose();
    if (!proposal) break;
    sweep::TrialSettings settings;
    for (size_t p = 0; p < spec.parameters.size(); ++p) settings.values[spec.parameters[p].path] = proposal->values[p];
    settings.name = spec.name + "-000";
    settings.output_dir = "/fuzz/trials/000";
    try {
      sweep::MakeTrialJob(spec.base_yaml, "/fuzz", settings, "trial", options.job);
    } catch (const SpecError&) {
      // A value inside a range the job refuses (the spec checks the ends and one point inside).
    }
    // A smooth objective of the values, so that the Bayesian strategy fits a GP.
    double objective = 0;
    for (const auto& v : proposal->values) objective += v.is_number() ? v.get<double>() : 1.0;
    search.Evaluated(proposal->trial, 10, std::isfinite(objective) ? objective : 0.0);
    search.Finished(proposal->trial, sweep::TrialStatus::kCompleted, 10);
  }
  // The grid proposes exactly its points (up to max_trials); the others exactly max_trials.
  const int64_t points = spec.strategy == sweep::StrategyType::kGrid ? sweep::GridSize(spec.parameters) : INT64_MAX;
  const int64_t expected = std::min<int64_t>({points, spec.max_trials, kMaxProposals});
  if (proposed != expected) {
    std::fprintf(stderr, "proposed %d trials, expected %lld\n", proposed, static_cast<long long>(expected));
    std::abort();
  }
  return 0;
}
