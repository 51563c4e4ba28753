#pragma once
// A sweep's search: proposes trials, judges their evaluations and records their ends, each as an
// event applied to the state and appended to trials.jsonl (when the search has a file). Opening
// a search on an existing trials.jsonl replays it: the search continues from the same state.
// Not thread-safe: one caller (the runner's loop) drives it. No LibTorch.

#include <cstdio>
#include <filesystem>
#include <memory>

#include "launcher/sweep/early_termination.h"
#include "launcher/sweep/strategies.h"
#include "launcher/sweep/sweep_state.h"

namespace shardtune::sweep {

struct Proposal {
  int64_t trial = 0;
  TrialValues values;
};

class SweepSearch {
 public:
  // `journal`: trials.jsonl, created (with its header line) or replayed; empty: in memory only.
  // Throws Error when the file belongs to another sweep or does not parse (a torn last line, from
  // a crash in the middle of a write, is dropped).
  SweepSearch(const SweepSpec& spec, const std::filesystem::path& journal,
              std::unique_ptr<SearchStrategy> strategy = nullptr);
  ~SweepSearch();
  SweepSearch(const SweepSearch&) = delete;
  SweepSearch& operator=(const SweepSearch&) = delete;

  // The next trial, or nullopt when max_trials have been proposed or the strategy has no more.
  std::optional<Proposal> Propose();
  // Records trial `trial`'s evaluation at `step` and judges it (early_termination); a stop is
  // recorded too. An evaluation at or before the trial's last recorded step is ignored (a rerun).
  StopDecision Evaluated(int64_t trial, int64_t step, double value);
  // Records the end of a trial: completed, stopped (after Evaluated said so) or failed (`error`).
  void Finished(int64_t trial, TrialStatus status, int64_t steps, const std::string& error = "");

  const SweepState& state() const { return state_; }
  // The trials proposed but not finished (after a replay: those the interruption cut short).
  std::vector<int64_t> Running() const;
  // Every trial proposed and finished, or none left to propose.
  bool Done() const;

 private:
  void Record(const nlohmann::json& event);

  const SweepSpec& spec_;
  SweepState state_;
  std::unique_ptr<SearchStrategy> strategy_;
  std::unique_ptr<EarlyStopper> stopper_;
  std::FILE* journal_ = nullptr;
  std::string journal_path_;
  bool exhausted_ = false;
};

}  // namespace shardtune::sweep
