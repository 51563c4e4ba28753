#include "common/job_spec.h"

#include <fmt/format.h>

#include <regex>

#include "common/evaluation_metrics.h"

namespace shardtune {

namespace {

std::string JoinProblems(const std::string& source, const std::vector<std::string>& problems) {
  std::string message =
      fmt::format("{}: {} problem{} in the job spec:", source, problems.size(), problems.size() == 1 ? "" : "s");
  for (const auto& problem : problems) message += "\n  " + problem;
  return message;
}

}  // namespace

SpecError::SpecError(const std::string& source, std::vector<std::string> problems)
    : Error(ErrorCode::kInvalidArgument, JoinProblems(source, problems)), problems_(std::move(problems)) {}

int64_t JobSpec::GlobalBatchSize(int64_t data_parallel_ranks) const {
  return training.global_batch_size > 0 ? training.global_batch_size : training.micro_batch_size * data_parallel_ranks;
}

int64_t JobSpec::GradientAccumulation(int64_t data_parallel_ranks) const {
  return GlobalBatchSize(data_parallel_ranks) / (training.micro_batch_size * data_parallel_ranks);
}

bool EarlyStoppingSpec::Minimizes() const {
  if (mode != MetricMode::kAuto) return mode == MetricMode::kMin;
  const EvaluationMetric* known = FindEvaluationMetric(metric);
  return known != nullptr && known->goal == MetricGoal::kLower;
}

std::string TimeLimitProblem(const std::string& value) {
  // Slurm's forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; "UNLIMITED"/"INFINITE" too.
  static const std::regex kForms(R"(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(:\d{1,2}){0,2})");
  if (value == "UNLIMITED" || value == "INFINITE" || std::regex_match(value, kForms)) return "";
  return fmt::format("'{}' is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)", value);
}

std::string SchedulerNameProblem(const std::string& value) {
  static const std::regex kName(R"([A-Za-z0-9_.-]{1,64})");
  if (std::regex_match(value, kName)) return "";
  return fmt::format("'{}' is not a plain name (letters, digits, '_', '-', '.'; at most 64 characters)", value);
}

}  // namespace shardtune
