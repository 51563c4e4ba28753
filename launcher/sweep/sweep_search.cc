#include "launcher/sweep/sweep_search.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace shardtune::sweep {

namespace fs = std::filesystem;

SweepSearch::SweepSearch(const SweepSpec& spec, const fs::path& journal, std::unique_ptr<SearchStrategy> strategy)
    : spec_(spec),
      state_(spec),
      strategy_(strategy ? std::move(strategy) : MakeStrategy(spec.strategy)),
      stopper_(MakeEarlyStopper(spec.early_termination)),
      journal_path_(journal.string()) {
  if (journal.empty()) return;
  bool fresh = true;
  if (fs::exists(journal)) {
    std::string text = ReadFile(journal);
    // One event is one write(); a crash in the middle of one leaves a line without its newline.
    const size_t end = text.rfind('\n');
    const size_t kept = end == std::string::npos ? 0 : end + 1;
    if (kept != text.size()) {
      text.resize(kept);
      WriteFileAtomic(journal, text);
    }
    std::istringstream lines(text);
    std::string line;
    for (int number = 1; std::getline(lines, line); ++number) {
      if (line.empty()) continue;
      try {
        state_.Apply(nlohmann::json::parse(line));
      } catch (const nlohmann::json::exception& e) {
        Fail(ErrorCode::kDataLoss, "{}:{}: not a JSON line: {}", journal.string(), number, e.what());
      } catch (const Error& e) {
        throw Error(e.code(), fmt::format("{}:{}: {}", journal.string(), number, e.what()));
      }
      fresh = false;
    }
  }
  journal_ = std::fopen(journal.c_str(), "a");
  if (journal_ == nullptr) FailErrno("fopen (append)", journal.string());
  if (fresh) Record(HeaderEvent(spec_));
}

SweepSearch::~SweepSearch() {
  if (journal_ != nullptr) std::fclose(journal_);
}

void SweepSearch::Record(const nlohmann::json& event) {
  state_.Apply(event);
  if (journal_ == nullptr) return;
  const std::string line = event.dump() + "\n";
  // One fwrite of the whole line and a flush: a reader sees whole lines; fsync so that a trial
  // recorded as finished is not run again after a power loss.
  if (std::fwrite(line.data(), 1, line.size(), journal_) != line.size() || std::fflush(journal_) != 0 ||
      ::fsync(fileno(journal_)) != 0)
    FailErrno("write", journal_path_);
}

std::optional<Proposal> SweepSearch::Propose() {
  const auto trial = static_cast<int64_t>(state_.trials().size());
  if (exhausted_ || trial >= spec_.max_trials) return std::nullopt;
  std::optional<TrialValues> values = strategy_->Propose(state_);
  if (!values) {
    exhausted_ = true;
    return std::nullopt;
  }
  Record(ProposedEvent(spec_, trial, *values));
  return Proposal{trial, std::move(*values)};
}

StopDecision SweepSearch::Evaluated(int64_t trial, int64_t step, double value) {
  const TrialRecord& t = state_.trial(trial);
  // A rerun after a resume repeats the evaluations it had reported; a stopped trial is judged.
  if (t.Finished() || (!t.evaluations.empty() && step <= t.evaluations.back().step)) return {};
  Record(EvaluatedEvent(trial, step, value));
  if (!stopper_) return {};
  StopDecision decision = stopper_->Judge(state_, trial);
  if (decision.stop) Record(StoppedEvent(trial, step, decision.reason));
  return decision;
}

void SweepSearch::Finished(int64_t trial, TrialStatus status, int64_t steps, const std::string& error) {
  TrialRecord end = state_.trial(trial);
  if (status != TrialStatus::kFailed && end.status == TrialStatus::kStopped) status = TrialStatus::kStopped;
  end.status = status;
  end.steps = std::max(steps, end.steps);
  if (!error.empty()) end.note = error;
  if (status == TrialStatus::kFailed) end.objective = std::nullopt;
  Record(FinishedEvent(end));
}

std::vector<int64_t> SweepSearch::Running() const {
  std::vector<int64_t> running;
  for (const TrialRecord& t : state_.trials())
    if (!t.Finished()) running.push_back(t.number);
  return running;
}

bool SweepSearch::Done() const {
  if (!Running().empty()) return false;
  return exhausted_ || static_cast<int64_t>(state_.trials().size()) >= spec_.max_trials;
}

}  // namespace shardtune::sweep
