#pragma once
// Which documents of a task's data files train and which validate: the validation split,
// duplicates and leaked copies removed (data.dedup), and rare classes repeated (data.balance:
// oversample). Indices are documents of the files' token caches (texts[i] is document i).

#include <cstdint>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/near_duplicates.h"

namespace shardtune {

// What the duplicate checks found in one task's data.
struct DedupFindings {
  // Within the training file (all of it, before any split): each record that copies an earlier
  // one, exactly or nearly (near_duplicates.h: FindDuplicates).
  std::vector<DuplicatePair> duplicates;
  int64_t exact = 0, near = 0;
  // Leakage: (training document, validation document) pairs whose texts are exact or near
  // copies, among the documents selected for each. `leaked` counts the validation documents
  // that have at least one copy among the training documents.
  std::vector<DuplicatePair> copies;
  int64_t leaked = 0;
  // Training documents removed by data.dedup: as duplicates, and as copies of validation ones.
  int64_t removed_duplicates = 0, removed_copies = 0;
};

struct TaskSelection {
  std::vector<int64_t> train;       // documents of the training file
  std::vector<int64_t> validation;  // of the validation file, or of the training file (split)
  bool validation_from_train = false;
  DedupFindings dedup;
};

struct SelectionInputs {
  int64_t train_size = 0;
  int64_t validation_size = -1;  // -1: no validation file; `validation_split` of train is held out
  double validation_split = 0.0;
  uint64_t seed = 0;  // of the split
  DataSpec::Dedup dedup;
  // Every record's text (record_texts.h: ReadRecordTexts), needed when `find_duplicates`; the
  // validation texts only with a validation file.
  const std::vector<std::string>* train_texts = nullptr;
  const std::vector<std::string>* validation_texts = nullptr;
  // Look for duplicates and copies (and report them) even when dedup.mode is none.
  bool find_duplicates = false;
};

// The selection. Without duplicate checks it is what it always was: every training document (or
// the training file less a seeded validation split). With data.dedup, duplicates within the
// training file are removed first (so a split never separates two copies), then the training
// documents that copy a validation one; `exact` removes exact copies only, `near` both.
TaskSelection SelectExamples(const SelectionInputs& in);

// data.balance: oversample. Each class's training documents repeated until it has as many as
// the largest class: every document of a class of n appears floor(largest / n) times, and a
// seeded choice of (largest mod n) of them once more. classes[d] is document d's class (-1 for
// none: kept once). The result keeps `train`'s order, a document's repeats next to it (the
// epochs' shuffle spreads them).
std::vector<int64_t> Oversampled(const std::vector<int64_t>& train, const std::vector<int64_t>& classes, uint64_t seed);

// data.balance: class_weights. The weight of class c is N / (C * n_c) for N training examples of
// C classes present (scikit-learn's "balanced"): the weights average 1 over the training data.
// counts[c] is n_c; a class with no examples gets weight 0 (it cannot occur as a target).
std::vector<double> BalancedClassWeights(const std::vector<int64_t>& counts);

}  // namespace shardtune
