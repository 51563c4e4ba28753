// The evaluation's figures against the one table of metric names (common/evaluation_metrics.h):
// what the evaluation reports for each task is what the table lists for it, and the job spec
// accepts every judging figure as training.early_stopping.metric, so that no figure can be
// reported and refused.
#include "common/evaluation_metrics.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "common/job_spec.h"
#include "worker/evaluation.h"

namespace shardtune {
namespace {

// A spec of `task` on its data format, stopping early on `metric`.
std::string SpecStoppingOn(ModelTask task, const std::string& metric) {
  const char* format = task == ModelTask::kCausalLm                 ? "tokens"
                       : task == ModelTask::kSequenceClassification ? "classification"
                                                                    : "ner";
  return fmt::format(
      "name: x\nmodel: {{path: /model, task: {}}}\ndata: {{train: /train.jsonl, format: {}, validation_split: 0.1}}\n"
      "output: {{dir: /out}}\ntraining: {{early_stopping: {{patience: 1, metric: {}}}}}\n",
      ToString(task), format, metric);
}

TEST(EvaluationMetrics, EveryReportedFigureIsListedForItsTaskAndAcceptedForEarlyStopping) {
  const std::vector<std::pair<ModelTask, std::vector<std::string>>> tasks = {
      {ModelTask::kCausalLm, {}},
      {ModelTask::kSequenceClassification, {"negative", "positive"}},
      {ModelTask::kTokenClassification, {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}}};
  SpecOptions no_file_checks;
  no_file_checks.check_files = false;
  for (const auto& [task, labels] : tasks) {
    SCOPED_TRACE(ToString(task));
    const nlohmann::json figures = Evaluation(task, labels).Metrics();
    std::set<std::string> reported;
    for (const auto& [name, value] : figures.items()) {
      if (!value.is_number()) continue;  // the per-class and per-type tables, the confusion matrix
      reported.insert(name);
      const EvaluationMetric* listed = FindEvaluationMetric(name);
      ASSERT_NE(listed, nullptr) << "'" << name << "' is reported but not listed";
      EXPECT_TRUE(listed->ReportedFor(task)) << "'" << name << "' is reported but not listed for this task";
      if (!listed->Judges()) {
        EXPECT_THROW(ParseJobSpec(SpecStoppingOn(task, name), "job.yaml", "/", no_file_checks), SpecError);
        continue;
      }
      const JobSpec spec = ParseJobSpec(SpecStoppingOn(task, name), "job.yaml", "/", no_file_checks);
      EXPECT_EQ(spec.training.early_stopping.metric, name);
      EXPECT_EQ(spec.training.early_stopping.Minimizes(), listed->goal == MetricGoal::kLower) << name;
    }
    for (const EvaluationMetric& metric : EvaluationMetrics()) {
      if (metric.ReportedFor(task))
        EXPECT_EQ(reported.count(std::string(metric.name)), 1u) << "'" << metric.name << "' is listed, not reported";
    }
    EXPECT_FALSE(JudgingMetrics(task).empty());
  }
}

}  // namespace
}  // namespace shardtune
