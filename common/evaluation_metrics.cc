#include "common/evaluation_metrics.h"

#include <algorithm>

namespace shardtune {

namespace {

constexpr ModelTask kLm = ModelTask::kCausalLm;
constexpr ModelTask kSequence = ModelTask::kSequenceClassification;
constexpr ModelTask kTokens = ModelTask::kTokenClassification;

}  // namespace

bool EvaluationMetric::ReportedFor(ModelTask task) const {
  return std::find(tasks.begin(), tasks.end(), task) != tasks.end();
}

const std::vector<EvaluationMetric>& EvaluationMetrics() {
  static const std::vector<EvaluationMetric> kTable = {
      {metric::kValLoss, MetricGoal::kLower, {kLm, kSequence, kTokens}},
      {metric::kPerplexity, MetricGoal::kLower, {kLm}},
      {metric::kTokenAccuracy, MetricGoal::kHigher, {kLm, kTokens}},
      {metric::kValTokens, MetricGoal::kNone, {kLm, kTokens}},
      {metric::kValExamples, MetricGoal::kNone, {kSequence}},
      {metric::kAccuracy, MetricGoal::kHigher, {kSequence}},
      {metric::kMacroF1, MetricGoal::kHigher, {kSequence}},
      {metric::kMicroF1, MetricGoal::kHigher, {kSequence}},
      {metric::kEntityPrecision, MetricGoal::kHigher, {kTokens}},
      {metric::kEntityRecall, MetricGoal::kHigher, {kTokens}},
      {metric::kEntityF1, MetricGoal::kHigher, {kTokens}},
      // evaluation.generate's (common/generation_metrics.h; GenerationScorer::Known()).
      {"exact_match", MetricGoal::kHigher, {kLm}, true},
      {"rouge_l", MetricGoal::kHigher, {kLm}, true},
      {"bleu", MetricGoal::kHigher, {kLm}, true},
      {"json_parse_rate", MetricGoal::kHigher, {kLm}, true},
      {"json_field_f1", MetricGoal::kHigher, {kLm}, true},
  };
  return kTable;
}

const EvaluationMetric* FindEvaluationMetric(std::string_view name) {
  for (const EvaluationMetric& m : EvaluationMetrics())
    if (m.name == name) return &m;
  return nullptr;
}

std::vector<std::string> JudgingMetrics(ModelTask task) {
  std::vector<std::string> names;
  for (const EvaluationMetric& m : EvaluationMetrics())
    if (m.Judges() && m.ReportedFor(task)) names.emplace_back(m.name);
  return names;
}

}  // namespace shardtune
