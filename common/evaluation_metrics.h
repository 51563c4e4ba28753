#pragma once
// The figures an evaluation reports, by name: the one table that the evaluation (worker/
// evaluation.cc) names its figures from and that the job spec checks training.early_stopping.metric
// against, so that no figure can be reported by one and refused by the other. Each entry says which
// tasks report it and whether a lower or a higher value is better. No LibTorch.

#include <string>
#include <string_view>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

// The names of the evaluation's figures, as metrics.jsonl and `shardtune evaluate` print them.
namespace metric {
inline constexpr char kValLoss[] = "val_loss";  // mean cross-entropy per target (token or example)
inline constexpr char kPerplexity[] = "perplexity";
inline constexpr char kTokenAccuracy[] = "token_accuracy";  // next tokens (causal LM) or tags (NER) predicted right
inline constexpr char kValTokens[] = "val_tokens";          // a count: the targets scored
inline constexpr char kAccuracy[] = "accuracy";
inline constexpr char kMacroF1[] = "macro_f1";
inline constexpr char kMicroF1[] = "micro_f1";
inline constexpr char kValExamples[] = "val_examples";  // a count: the examples scored
inline constexpr char kEntityPrecision[] = "entity_precision";
inline constexpr char kEntityRecall[] = "entity_recall";
inline constexpr char kEntityF1[] = "entity_f1";
}  // namespace metric

// Which way a figure improves; a count (the size of the validation set) judges nothing.
enum class MetricGoal { kLower, kHigher, kNone };

struct EvaluationMetric {
  std::string_view name;
  MetricGoal goal;
  std::vector<ModelTask> tasks;  // the tasks whose evaluation reports it
  bool generated = false;        // scored on generated answers: only when evaluation.generate.metrics names it

  bool ReportedFor(ModelTask task) const;
  // Early stopping and output.keep_best can judge evaluations by it.
  bool Judges() const { return goal != MetricGoal::kNone; }
};

// Every figure any evaluation reports, in the order a task's evaluation reports them.
const std::vector<EvaluationMetric>& EvaluationMetrics();
// The entry named `name`; nullptr if no evaluation reports such a figure.
const EvaluationMetric* FindEvaluationMetric(std::string_view name);
// The names that training.early_stopping.metric accepts for `task`: its evaluation's judging figures.
std::vector<std::string> JudgingMetrics(ModelTask task);

}  // namespace shardtune
