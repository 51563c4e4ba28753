#pragma once
// The metrics of the classification heads' evaluation, from counts that ranks sum (so that every
// rank's share of the validation set counts once): a confusion matrix for sequence
// classification; per entity type, true positives, predicted and gold entities for NER
// (entity-level, exact span and type, as seqeval's default mode counts them). No LibTorch.

#include <cstdint>
#include <string>
#include <vector>

namespace shardtune {

struct ClassMetrics {
  double precision = 0, recall = 0, f1 = 0;
  int64_t support = 0;  // gold examples of the class
};

struct ClassificationMetrics {
  double accuracy = 0;
  double macro_f1 = 0;  // the mean of the classes' F1 (a class never seen nor predicted counts 0)
  double micro_f1 = 0;  // from the summed counts; equals accuracy for one label per example
  std::vector<ClassMetrics> classes;
};

// `confusion[true * n + predicted]`, n classes.
ClassificationMetrics FromConfusion(const std::vector<int64_t>& confusion, int64_t n);

struct Entity {
  std::string type;
  int64_t begin = 0, end = 0;  // [begin, end) in the tag sequence
  bool operator==(const Entity& o) const { return type == o.type && begin == o.begin && end == o.end; }
};

// Entities of a BIO (IOB2) tag sequence, as seqeval reads them: B-X starts one; I-X continues an
// entity of type X and otherwise (after O, or after another type) starts one; O ends it.
std::vector<Entity> BioEntities(const std::vector<std::string>& tags);

// The entity types of BIO tag names ("B-PER", "I-PER", "O" -> {"PER"}), sorted.
std::vector<std::string> EntityTypes(const std::vector<std::string>& tag_names);

// Adds one sequence's counts to `counts` (3 per type, in `types` order: true positives,
// predicted, gold).
void CountEntities(const std::vector<std::string>& gold, const std::vector<std::string>& predicted,
                   const std::vector<std::string>& types, std::vector<int64_t>& counts);

struct EntityMetrics {
  double precision = 0, recall = 0, f1 = 0;  // micro over all types, as seqeval reports them
  std::vector<ClassMetrics> types;
};
EntityMetrics FromEntityCounts(const std::vector<int64_t>& counts, int64_t types);

}  // namespace shardtune
