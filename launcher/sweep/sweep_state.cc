#include "launcher/sweep/sweep_state.h"

#include "common/error.h"

namespace shardtune::sweep {

namespace {

const std::pair<const char*, TrialStatus> kStatuses[] = {{"running", TrialStatus::kRunning},
                                                         {"completed", TrialStatus::kCompleted},
                                                         {"stopped", TrialStatus::kStopped},
                                                         {"failed", TrialStatus::kFailed}};

TrialStatus StatusNamed(const std::string& name) {
  for (const auto& [spelling, status] : kStatuses)
    if (name == spelling) return status;
  Fail(ErrorCode::kDataLoss, "unknown trial status '{}'", name);
}

}  // namespace

const char* ToString(TrialStatus v) {
  for (const auto& [spelling, status] : kStatuses)
    if (status == v) return spelling;
  return "?";
}

std::optional<double> TrialRecord::BestUpTo(int64_t step, const Objective& objective_spec) const {
  std::optional<double> best;
  for (const Evaluation& e : evaluations)
    if (e.step <= step && (!best || objective_spec.Better(e.value, *best))) best = e.value;
  return best;
}

nlohmann::json HeaderEvent(const SweepSpec& spec) {
  nlohmann::json space = nlohmann::json::array();
  for (const Parameter& p : spec.parameters) space.push_back(ParameterToJson(p));
  return {
      {"event", "sweep"},  {"version", kTrialsFileVersion},
      {"name", spec.name}, {"strategy", ToString(spec.strategy)},
      {"seed", spec.seed}, {"parameters", spec.ParameterPaths()},
      {"space", space},    {"objective", {{"metric", spec.objective.metric}, {"goal", ToString(spec.objective.goal)}}}};
}

SweepSpec SpecFromHeader(const nlohmann::json& header) {
  try {
    if (header.value("event", "") != "sweep") Fail(ErrorCode::kDataLoss, "the first line is not the sweep's header");
    if (header.at("version").get<int>() != kTrialsFileVersion)
      Fail(ErrorCode::kDataLoss, "version {}, this shardtune reads version {}", header.at("version").dump(),
           kTrialsFileVersion);
    if (!header.contains("space") || !header.contains("objective"))
      Fail(ErrorCode::kFailedPrecondition,
           "the header records no parameter space or objective (written by an earlier shardtune sweep): a "
           "sweep run by this version writes them");
    SweepSpec spec;
    spec.name = header.at("name").get<std::string>();
    const auto strategy = StrategyNamed(header.at("strategy").get<std::string>());
    if (!strategy) Fail(ErrorCode::kDataLoss, "unknown strategy {}", header.at("strategy").dump());
    spec.strategy = *strategy;
    spec.seed = header.at("seed").get<uint64_t>();
    for (const nlohmann::json& p : header.at("space")) spec.parameters.push_back(ParameterFromJson(p));
    spec.objective.metric = header.at("objective").at("metric").get<std::string>();
    const auto goal = GoalNamed(header.at("objective").at("goal").get<std::string>());
    if (!goal) Fail(ErrorCode::kDataLoss, "unknown objective goal {}", header.at("objective").at("goal").dump());
    spec.objective.goal = *goal;
    return spec;
  } catch (const nlohmann::json::exception& e) {
    Fail(ErrorCode::kDataLoss, "a malformed header {}: {}", header.dump(), e.what());
  }
}

nlohmann::json ProposedEvent(const SweepSpec& spec, int64_t trial, const TrialValues& values) {
  return {{"event", "proposed"}, {"trial", trial}, {"values", ValuesToJson(spec.parameters, values)}};
}

nlohmann::json EvaluatedEvent(int64_t trial, int64_t step, double value) {
  return {{"event", "evaluated"}, {"trial", trial}, {"step", step}, {"value", value}};
}

nlohmann::json StoppedEvent(int64_t trial, int64_t step, const std::string& reason) {
  return {{"event", "stopped"}, {"trial", trial}, {"step", step}, {"reason", reason}};
}

nlohmann::json FinishedEvent(const TrialRecord& trial) {
  nlohmann::json event = {{"event", "finished"},
                          {"trial", trial.number},
                          {"status", ToString(trial.status)},
                          {"objective", trial.objective ? nlohmann::json(*trial.objective) : nlohmann::json(nullptr)},
                          {"steps", trial.steps}};
  if (!trial.note.empty()) event["note"] = trial.note;
  return event;
}

const TrialRecord& SweepState::trial(int64_t number) const {
  ST_CHECK(number >= 0 && number < static_cast<int64_t>(trials_.size()), "no trial {}", number);
  return trials_[static_cast<size_t>(number)];
}

std::optional<int64_t> SweepState::Best() const {
  std::optional<int64_t> best;
  for (const TrialRecord& t : trials_) {
    if (!t.Finished() || !t.objective) continue;
    if (!best || spec_->objective.Better(*t.objective, *trials_[static_cast<size_t>(*best)].objective)) best = t.number;
  }
  return best;
}

TrialRecord& SweepState::Mutable(const nlohmann::json& event) {
  const int64_t number = event.at("trial").get<int64_t>();
  if (number < 0 || number >= static_cast<int64_t>(trials_.size()))
    Fail(ErrorCode::kDataLoss, "an event of trial {}, which was never proposed", number);
  return trials_[static_cast<size_t>(number)];
}

bool SweepState::Apply(const nlohmann::json& event) {
  try {
    const std::string kind = event.at("event").get<std::string>();
    if (kind == "sweep") {
      if (event.at("version").get<int>() != kTrialsFileVersion)
        Fail(ErrorCode::kDataLoss, "version {}, this shardtune reads version {}", event.at("version").dump(),
             kTrialsFileVersion);
      const nlohmann::json expected = HeaderEvent(*spec_);
      for (const char* key : {"name", "strategy", "seed", "parameters"}) {
        if (event.at(key) != expected.at(key))
          Fail(ErrorCode::kFailedPrecondition,
               "it was written by another sweep: its {} is {}, the sweep spec's {} (a changed spec starts a new "
               "sweep directory)",
               key, event.at(key).dump(), expected.at(key).dump());
      }
      return false;
    }
    if (kind == "proposed") {
      const int64_t number = event.at("trial").get<int64_t>();
      if (number != static_cast<int64_t>(trials_.size()))
        Fail(ErrorCode::kDataLoss, "trial {} proposed after {} trials", number, trials_.size());
      TrialRecord record;
      record.number = number;
      record.values = ValuesFromJson(spec_->parameters, event.at("values"));
      trials_.push_back(std::move(record));
      return true;
    }
    TrialRecord& trial = Mutable(event);
    if (kind == "evaluated") {
      const int64_t step = event.at("step").get<int64_t>();
      if (trial.Finished() || (!trial.evaluations.empty() && step <= trial.evaluations.back().step)) return false;
      const double value = event.at("value").get<double>();
      trial.evaluations.push_back({step, value});
      trial.sequence.push_back(evaluations_seen_++);
      trial.steps = step;
      if (!trial.objective || spec_->objective.Better(value, *trial.objective)) trial.objective = value;
      return true;
    }
    if (kind == "stopped") {
      if (trial.Finished()) return false;
      trial.status = TrialStatus::kStopped;
      trial.note = event.at("reason").get<std::string>();
      return true;
    }
    if (kind == "finished") {
      trial.status = StatusNamed(event.at("status").get<std::string>());
      const nlohmann::json& objective = event.at("objective");
      trial.objective = objective.is_null() ? std::nullopt : std::optional<double>(objective.get<double>());
      trial.steps = event.at("steps").get<int64_t>();
      trial.note = event.value("note", trial.note);
      return true;
    }
    Fail(ErrorCode::kDataLoss, "unknown event '{}'", kind);
  } catch (const nlohmann::json::exception& e) {
    Fail(ErrorCode::kDataLoss, "a malformed event {}: {}", event.dump(), e.what());
  }
}

}  // namespace shardtune::sweep
