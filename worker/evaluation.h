#pragma once
// What an evaluation adds up over batches, and the figures read from the sums, for every task:
// causal LM (loss, perplexity, token accuracy; per task of a multi-task job), sequence
// classification (task_metrics.h: accuracy, F1s, per class, confusion matrix) and NER (entity
// precision, recall and F1 by type, token accuracy). The sums are one vector of doubles, so that
// ranks sum them in one collective and every validation example counts once on any world size.
// Used by the trainer's evaluations and by `shardtune evaluate`.

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "worker/data/token_dataset.h"

namespace shardtune {

class Evaluation {
 public:
  // `labels`: a classifier's classes (NER: its tags). `groups`: the tasks of a multi-task causal
  // LM job (figures per group too); 1 otherwise.
  Evaluation(ModelTask task, std::vector<std::string> labels, int64_t groups = 1);

  // A batch's task logits: (B, S, V) for a language model, (B, classes) for sequence
  // classification, (B, S, tags) for NER. `groups[i]`: example i's group (default 0). Examples
  // without targets (a rank's idle filler) add nothing.
  void Add(const at::Tensor& logits, const Batch& batch, const std::vector<const Example*>& examples,
           const std::vector<int64_t>& groups = {});

  std::vector<double>& sums() { return sums_; }
  // Tokens (causal LM, NER) or examples (classification) scored.
  double targets() const { return sums_[task_ == ModelTask::kCausalLm ? 1 + groups_ : 1]; }

  // {"val_loss", ...the task's figures}, named as common/evaluation_metrics.h lists them for the
  // task (besides per-class or per-type tables); with several groups, "tasks": {name: {...}} too.
  nlohmann::json Metrics(const std::vector<std::string>& group_names = {}) const;
  // One line for the log: "val_loss 0.1234 accuracy 0.9500 macro_f1 0.9499".
  static std::string Summary(const nlohmann::json& metrics);

 private:
  ModelTask task_;
  std::vector<std::string> labels_;
  int64_t groups_;
  std::vector<std::string> entity_types_;
  // Causal LM: loss, targets, correct, each for all then per group. Classifiers: loss, targets,
  // then the confusion matrix (true x predicted) or, per entity type, (true positives,
  // predicted, gold) and the tagged tokens predicted right.
  std::vector<double> sums_;
};

}  // namespace shardtune
