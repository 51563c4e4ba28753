#include "worker/task_metrics.h"

#include <algorithm>
#include <set>

namespace shardtune {

namespace {

ClassMetrics Score(int64_t true_positive, int64_t predicted, int64_t gold) {
  ClassMetrics m;
  m.support = gold;
  m.precision = predicted > 0 ? static_cast<double>(true_positive) / static_cast<double>(predicted) : 0.0;
  m.recall = gold > 0 ? static_cast<double>(true_positive) / static_cast<double>(gold) : 0.0;
  m.f1 = m.precision + m.recall > 0 ? 2 * m.precision * m.recall / (m.precision + m.recall) : 0.0;
  return m;
}

// "B-PER" -> {'B', "PER"}; "O" (or anything without a prefix) -> {'O', ""}.
std::pair<char, std::string> Split(const std::string& tag) {
  if (tag.size() >= 2 && (tag[0] == 'B' || tag[0] == 'I') && tag[1] == '-') return {tag[0], tag.substr(2)};
  return {'O', ""};
}

}  // namespace

ClassificationMetrics FromConfusion(const std::vector<int64_t>& confusion, int64_t n) {
  ClassificationMetrics m;
  int64_t total = 0, correct = 0;
  for (int64_t c = 0; c < n; ++c) {
    int64_t predicted = 0, gold = 0;
    for (int64_t k = 0; k < n; ++k) {
      predicted += confusion[k * n + c];
      gold += confusion[c * n + k];
    }
    m.classes.push_back(Score(confusion[c * n + c], predicted, gold));
    correct += confusion[c * n + c];
    total += gold;
  }
  m.accuracy = total > 0 ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
  for (const ClassMetrics& c : m.classes) m.macro_f1 += c.f1 / static_cast<double>(n);
  m.micro_f1 = Score(correct, total, total).f1;
  return m;
}

std::vector<Entity> BioEntities(const std::vector<std::string>& tags) {
  std::vector<Entity> entities;
  bool open = false;
  for (size_t i = 0; i <= tags.size(); ++i) {
    const auto [prefix, type] = i < tags.size() ? Split(tags[i]) : std::pair<char, std::string>{'O', ""};
    const bool continues = open && prefix == 'I' && type == entities.back().type;
    if (open && !continues) {
      entities.back().end = static_cast<int64_t>(i);
      open = false;
    }
    if (prefix != 'O' && !continues) {
      entities.push_back(Entity{type, static_cast<int64_t>(i), static_cast<int64_t>(i)});
      open = true;
    }
  }
  return entities;
}

std::vector<std::string> EntityTypes(const std::vector<std::string>& tag_names) {
  std::set<std::string> types;
  for (const auto& tag : tag_names) {
    const auto [prefix, type] = Split(tag);
    if (prefix != 'O') types.insert(type);
  }
  return {types.begin(), types.end()};
}

void CountEntities(const std::vector<std::string>& gold, const std::vector<std::string>& predicted,
                   const std::vector<std::string>& types, std::vector<int64_t>& counts) {
  auto index = [&](const std::string& type) { return std::find(types.begin(), types.end(), type) - types.begin(); };
  const std::vector<Entity> g = BioEntities(gold), p = BioEntities(predicted);
  for (const Entity& e : p) {
    const auto t = index(e.type);
    if (t >= static_cast<int64_t>(types.size())) continue;
    counts[3 * t + 1] += 1;
    if (std::find(g.begin(), g.end(), e) != g.end()) counts[3 * t] += 1;
  }
  for (const Entity& e : g) {
    const auto t = index(e.type);
    if (t < static_cast<int64_t>(types.size())) counts[3 * t + 2] += 1;
  }
}

EntityMetrics FromEntityCounts(const std::vector<int64_t>& counts, int64_t types) {
  EntityMetrics m;
  int64_t tp = 0, predicted = 0, gold = 0;
  for (int64_t t = 0; t < types; ++t) {
    m.types.push_back(Score(counts[3 * t], counts[3 * t + 1], counts[3 * t + 2]));
    tp += counts[3 * t];
    predicted += counts[3 * t + 1];
    gold += counts[3 * t + 2];
  }
  const ClassMetrics all = Score(tp, predicted, gold);
  m.precision = all.precision;
  m.recall = all.recall;
  m.f1 = all.f1;
  return m;
}

}  // namespace shardtune
