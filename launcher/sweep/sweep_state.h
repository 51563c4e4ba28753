#pragma once
// What a sweep knows about its trials, rebuilt from SWEEP_DIR/trials.jsonl: one JSON line per
// event, applied in order. The search (strategies, early termination) reads only this state, so a
// sweep replayed from its file continues with the same proposals and decisions (docs/sweeps.md,
// "trials.jsonl"). No LibTorch.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "launcher/sweep/search_space.h"
#include "launcher/sweep/sweep_spec.h"

namespace shardtune::sweep {

// The version trials.jsonl's first line carries; a file of another version is refused.
inline constexpr int kTrialsFileVersion = 1;

enum class TrialStatus {
  kRunning,    // proposed, not finished (after a resume: to be run again, from its checkpoints)
  kCompleted,  // trained to the end
  kStopped,    // stopped early; its best evaluation counts
  kFailed,     // no objective
};
const char* ToString(TrialStatus v);

struct Evaluation {
  int64_t step = 0;
  double value = 0;  // the objective's metric at that step
};

struct TrialRecord {
  int64_t number = 0;  // 0, 1, ... in proposal order
  TrialValues values;
  TrialStatus status = TrialStatus::kRunning;
  std::vector<Evaluation> evaluations;  // in step order
  std::vector<int64_t> sequence;        // each evaluation's place among all trials' (arrival order)
  std::optional<double> objective;      // the best evaluation (by the objective's goal)
  int64_t steps = 0;                    // training steps run (the last evaluation's, or the finish's)
  std::string note;                     // why it stopped or failed

  bool Finished() const { return status != TrialStatus::kRunning; }
  // The best value among the evaluations at steps <= `step`; nullopt if none.
  std::optional<double> BestUpTo(int64_t step, const Objective& objective) const;
};

// The events, as trials.jsonl writes them (one object per line, the "event" key names it):
//   {"event":"sweep","version":1,"name":N,"strategy":S,"seed":S,"parameters":[paths],
//    "space":[parameters],"objective":{"metric":M,"goal":G}}                              (first line)
//   {"event":"proposed","trial":T,"values":{path: value}}
//   {"event":"evaluated","trial":T,"step":S,"value":V}
//   {"event":"stopped","trial":T,"step":S,"reason":R}
//   {"event":"finished","trial":T,"status":"completed"|"stopped"|"failed","objective":V|null,"steps":S,"note":N}
//   (note: why it stopped or failed; absent when neither)
nlohmann::json HeaderEvent(const SweepSpec& spec);
// The part of the spec the header records since it carries "space" (each parameter's
// distribution: ParameterToJson) and "objective" ({"metric", "goal"}): name, strategy, seed,
// parameters, objective. For readers that have the directory and not the sweep file (`shardtune
// report`). Throws Error: kFailedPrecondition for a header written before those keys, kDataLoss
// for a malformed one.
SweepSpec SpecFromHeader(const nlohmann::json& header);
nlohmann::json ProposedEvent(const SweepSpec& spec, int64_t trial, const TrialValues& values);
nlohmann::json EvaluatedEvent(int64_t trial, int64_t step, double value);
nlohmann::json StoppedEvent(int64_t trial, int64_t step, const std::string& reason);
nlohmann::json FinishedEvent(const TrialRecord& trial);

class SweepState {
 public:
  explicit SweepState(const SweepSpec& spec) : spec_(&spec) {}

  // Applies one event. Throws Error(kDataLoss) on an event that does not fit the state (another
  // sweep's header, a trial out of order); an evaluation at or before the trial's last recorded
  // step is ignored (a trial rerun after a resume repeats the evaluations it had reported).
  // Returns whether the event changed the state.
  bool Apply(const nlohmann::json& event);

  const std::vector<TrialRecord>& trials() const { return trials_; }
  const TrialRecord& trial(int64_t number) const;
  const SweepSpec& spec() const { return *spec_; }
  int64_t evaluations_seen() const { return evaluations_seen_; }
  // The finished trial with the best objective (the lower number on a tie); nullopt if none.
  std::optional<int64_t> Best() const;

 private:
  TrialRecord& Mutable(const nlohmann::json& event);

  const SweepSpec* spec_;
  std::vector<TrialRecord> trials_;
  int64_t evaluations_seen_ = 0;
};

}  // namespace shardtune::sweep
