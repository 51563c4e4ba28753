#include "worker/evaluation.h"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <cmath>

#include "common/evaluation_metrics.h"
#include "worker/models/llama.h"
#include "worker/task_metrics.h"

namespace shardtune {

using nlohmann::json;

namespace {

// Each class's (or entity type's) precision, recall, f1 and support, under its name.
json ScoresByName(const std::vector<std::string>& names, const std::vector<ClassMetrics>& scores) {
  json by_name = json::object();
  for (size_t k = 0; k < names.size(); ++k) {
    by_name[names[k]] = {{"precision", scores[k].precision},
                         {"recall", scores[k].recall},
                         {"f1", scores[k].f1},
                         {"support", scores[k].support}};
  }
  return by_name;
}

}  // namespace

Evaluation::Evaluation(ModelTask task, std::vector<std::string> labels, int64_t groups)
    : task_(task), labels_(std::move(labels)), groups_(groups) {
  const auto n = static_cast<int64_t>(labels_.size());
  switch (task_) {
    case ModelTask::kCausalLm:
      sums_.assign(3 * (1 + groups_), 0.0);
      break;
    case ModelTask::kSequenceClassification:
      sums_.assign(2 + n * n, 0.0);
      break;
    case ModelTask::kTokenClassification:
      entity_types_ = EntityTypes(labels_);
      sums_.assign(2 + 3 * entity_types_.size() + 1, 0.0);
      break;
  }
}

void Evaluation::Add(const at::Tensor& logits, const Batch& batch, const std::vector<const Example*>& examples,
                     const std::vector<int64_t>& groups) {
  at::NoGradGuard no_grad;
  if (task_ == ModelTask::kCausalLm) {
    const int64_t s = logits.size(1);
    const at::Tensor labels = batch.labels.to(logits.device());
    const auto [loss, targets] = CausalLmLossPerExample(logits, labels);
    const at::Tensor shifted = labels.narrow(1, 1, s - 1);
    const at::Tensor correct =
        logits.narrow(1, 0, s - 1).argmax(-1).eq(shifted).logical_and(shifted.ne(-100)).sum(1).cpu();
    const at::Tensor loss_host = loss.to(at::kDouble).cpu(), targets_host = targets.to(at::kDouble).cpu();
    const int64_t columns = 1 + groups_;
    for (size_t i = 0; i < examples.size(); ++i) {
      const int64_t group = groups.empty() ? 0 : groups[i];
      for (int64_t column : {int64_t{0}, 1 + group}) {
        if (column == 1 + group && groups_ == 1) continue;  // one group: the total is the group
        sums_[0 * columns + column] += loss_host[static_cast<int64_t>(i)].item<double>();
        sums_[1 * columns + column] += targets_host[static_cast<int64_t>(i)].item<double>();
        sums_[2 * columns + column] += static_cast<double>(correct[static_cast<int64_t>(i)].item<int64_t>());
      }
    }
    return;
  }
  const LossSum loss = task_ == ModelTask::kSequenceClassification
                           ? SequenceClassificationLossSum(logits, batch.class_labels)
                           : TokenClassificationLossSum(logits, batch.labels);
  sums_[0] += loss.sum.item<double>();
  sums_[1] += static_cast<double>(loss.tokens);
  const auto n = static_cast<int64_t>(labels_.size());
  if (task_ == ModelTask::kSequenceClassification) {
    const at::Tensor predicted = logits.argmax(-1).cpu();
    for (size_t i = 0; i < examples.size(); ++i) {
      const int64_t gold = examples[i]->class_label;
      if (gold >= 0) sums_[2 + gold * n + predicted[static_cast<int64_t>(i)].item<int64_t>()] += 1;
    }
    return;
  }
  const auto t = static_cast<int64_t>(entity_types_.size());
  const at::Tensor predicted = logits.argmax(-1).cpu(), labels = batch.labels.cpu();
  std::vector<int64_t> counts(3 * t, 0);
  for (size_t i = 0; i < examples.size(); ++i) {
    std::vector<std::string> gold_tags, predicted_tags;
    for (int64_t k = 0; k < labels.size(1); ++k) {
      const int64_t gold = labels[static_cast<int64_t>(i)][k].item<int64_t>();
      if (gold == -100) continue;
      const int64_t guess = predicted[static_cast<int64_t>(i)][k].item<int64_t>();
      gold_tags.push_back(labels_[gold]);
      predicted_tags.push_back(labels_[guess]);
      sums_[2 + 3 * t] += gold == guess;
    }
    CountEntities(gold_tags, predicted_tags, entity_types_, counts);
  }
  for (int64_t k = 0; k < 3 * t; ++k) sums_[2 + k] += static_cast<double>(counts[k]);
}

json Evaluation::Metrics(const std::vector<std::string>& group_names) const {
  json m;
  if (task_ == ModelTask::kCausalLm) {
    const int64_t columns = 1 + groups_;
    auto figures = [&](int64_t column) {
      const double targets = sums_[columns + column];
      const double val_loss = targets > 0 ? sums_[column] / targets : 0.0;
      return json{{metric::kValLoss, val_loss},
                  {metric::kPerplexity, std::exp(val_loss)},
                  {metric::kTokenAccuracy, targets > 0 ? sums_[2 * columns + column] / targets : 0.0},
                  {metric::kValTokens, static_cast<int64_t>(targets)}};
    };
    m = figures(0);
    if (groups_ > 1) {
      m["tasks"] = json::object();
      for (int64_t g = 0; g < groups_; ++g) {
        if (sums_[columns + 1 + g] > 0) m["tasks"][group_names.at(g)] = figures(1 + g);
      }
    }
    return m;
  }
  const double targets = sums_[1];
  m[metric::kValLoss] = targets > 0 ? sums_[0] / targets : 0.0;
  const auto n = static_cast<int64_t>(labels_.size());
  if (task_ == ModelTask::kSequenceClassification) {
    std::vector<int64_t> confusion(n * n);
    for (int64_t i = 0; i < n * n; ++i) confusion[i] = static_cast<int64_t>(sums_[2 + i]);
    const ClassificationMetrics c = FromConfusion(confusion, n);
    m[metric::kValExamples] = static_cast<int64_t>(targets);
    m[metric::kAccuracy] = c.accuracy;
    m[metric::kMacroF1] = c.macro_f1;
    m[metric::kMicroF1] = c.micro_f1;
    m["per_class"] = ScoresByName(labels_, c.classes);
    json rows = json::array();  // rows: true class, columns: predicted
    for (int64_t r = 0; r < n; ++r)
      rows.push_back(std::vector<int64_t>(confusion.begin() + r * n, confusion.begin() + (r + 1) * n));
    m["confusion"] = rows;
    return m;
  }
  const auto t = static_cast<int64_t>(entity_types_.size());
  std::vector<int64_t> counts(3 * t);
  for (int64_t k = 0; k < 3 * t; ++k) counts[k] = static_cast<int64_t>(sums_[2 + k]);
  const EntityMetrics e = FromEntityCounts(counts, t);
  m[metric::kValTokens] = static_cast<int64_t>(targets);
  m[metric::kTokenAccuracy] = targets > 0 ? sums_[2 + 3 * t] / targets : 0.0;
  m[metric::kEntityPrecision] = e.precision;
  m[metric::kEntityRecall] = e.recall;
  m[metric::kEntityF1] = e.f1;
  m["per_type"] = ScoresByName(entity_types_, e.types);
  return m;
}

std::string Evaluation::Summary(const json& m) {
  std::string line = fmt::format("val_loss {:.4f}", m.at(metric::kValLoss).get<double>());
  for (const char* key :
       {metric::kPerplexity, metric::kAccuracy, metric::kMacroF1, metric::kEntityF1, metric::kTokenAccuracy})
    if (m.contains(key)) line += fmt::format(" {} {:.4f}", key, m.at(key).get<double>());
  for (const EvaluationMetric& generated : EvaluationMetrics()) {  // evaluation.generate's
    const std::string key(generated.name);
    if (generated.generated && m.contains(key)) line += fmt::format(" {} {:.4f}", key, m.at(key).get<double>());
  }
  return line;
}

}  // namespace shardtune
