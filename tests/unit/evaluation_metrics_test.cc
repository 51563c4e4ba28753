// The evaluation's figures against the one table of metric names (common/evaluation_metrics.h):
// what the evaluation reports for each task is what the table lists for it, and the job spec
// accepts every judging figure as training.early_stopping.metric (a generation metric when
// evaluation.generate asks for it), so that no figure can be reported and refused.
#include "common/evaluation_metrics.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "common/generation_metrics.h"
#include "common/job_spec.h"
#include "worker/evaluation.h"

namespace shardtune {
namespace {

// A spec of `task` on its data format, stopping early on `metric`.
// A generation metric is asked for in evaluation.generate (on data with prompts).
std::string SpecStoppingOn(ModelTask task, const std::string& metric, bool generated = false) {
  const char* format = task == ModelTask::kCausalLm                 ? (generated ? "completion" : "tokens")
                       : task == ModelTask::kSequenceClassification ? "classification"
                                                                    : "ner";
  return fmt::format(
      "name: x\nmodel: {{path: /model, task: {}}}\ndata: {{train: /train.jsonl, format: {}, validation_split: 0.1}}\n"
      "output: {{dir: /out}}\ntraining: {{early_stopping: {{patience: 1, metric: {}}}}}\n{}",
      ToString(task), format, metric,
      generated ? fmt::format("evaluation: {{generate: {{metrics: [{}]}}}}\n", metric) : "");
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
    nlohmann::json figures = Evaluation(task, labels).Metrics();
    // A language model's evaluation reports the generation metrics asked for, too.
    if (task == ModelTask::kCausalLm) figures.update(GenerationScorer(GenerationScorer::Known()).Metrics());
    std::set<std::string> reported;
    for (const auto& [name, value] : figures.items()) {
      if (!value.is_number() || name == "generated") continue;  // tables, the confusion matrix; a count
      reported.insert(name);
      const EvaluationMetric* listed = FindEvaluationMetric(name);
      ASSERT_NE(listed, nullptr) << "'" << name << "' is reported but not listed";
      EXPECT_TRUE(listed->ReportedFor(task)) << "'" << name << "' is reported but not listed for this task";
      if (!listed->Judges()) {
        EXPECT_THROW(ParseJobSpec(SpecStoppingOn(task, name), "job.yaml", "/", no_file_checks), SpecError);
        continue;
      }
      const JobSpec spec = ParseJobSpec(SpecStoppingOn(task, name, listed->generated), "job.yaml", "/", no_file_checks);
      if (listed->generated)  // only when evaluation.generate asks for it
        EXPECT_THROW(ParseJobSpec(SpecStoppingOn(task, name), "job.yaml", "/", no_file_checks), SpecError) << name;
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
