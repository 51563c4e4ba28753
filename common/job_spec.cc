#include "common/job_spec.h"

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

}  // namespace shardtune
