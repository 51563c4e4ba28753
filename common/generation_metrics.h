#pragma once
// Measures of generated text against references, each as its reference implementation defines
// it, so that a figure here is the figure users know:
//   exact_match      the generation equals the reference (whitespace at the ends ignored)
//   rouge_l          ROUGE-L F-measure as Google's rouge-score package computes it (no stemming):
//                    lowercased, [^a-z0-9]+ as separators, F1 of the longest common subsequence
//   bleu             corpus BLEU-4 as sacreBLEU computes it by default: 13a tokenization, clipped
//                    n-gram counts summed over the corpus, the closest reference length for the
//                    brevity penalty, "exp" smoothing; on sacreBLEU's 0-100 scale
//   json_parse_rate  the share of generations that parse as JSON
//   json_field_f1    precision/recall/F1 over (key path, value) pairs, nested objects' keys
//                    joined with "."; lists and scalars are compared whole; micro-averaged
//   pass@k           the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
//                    Trained on Code"): 1 - C(n - c, k) / C(n, k) for c of n samples passing,
//                    averaged over the problems (the samples run by common/code_sandbox.h)

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

// rouge-score's tokenizer (tokenize.py, without a stemmer).
std::vector<std::string> RougeTokens(std::string_view text);
struct RougeScore {
  double precision = 0, recall = 0, fmeasure = 0;
};
// ROUGE-L of one prediction against one target (rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction)).
RougeScore RougeL(std::string_view target, std::string_view prediction);

// sacreBLEU's 13a tokenizer (mteval-v13a.pl's).
std::string Tokenize13a(std::string_view line);
struct BleuScore {
  double score = 0;  // 0-100
  double precisions[4] = {0, 0, 0, 0};
  double brevity_penalty = 0;
  int64_t hypothesis_length = 0, reference_length = 0;
};
// What corpus BLEU sums over its sentences, so that parts of a corpus (a rank's share) add up.
struct BleuStatistics {
  int64_t correct[4] = {0, 0, 0, 0};  // clipped n-gram matches, n = 1..4
  int64_t total[4] = {0, 0, 0, 0};    // the hypotheses' n-grams
  int64_t hypothesis_length = 0, reference_length = 0;

  void Add(std::string_view hypothesis, const std::vector<std::string>& references);
  BleuScore Score() const;
};
// Corpus BLEU of hypotheses[i] against references[i] (one or more references each).
BleuScore CorpusBleu(const std::vector<std::string>& hypotheses,
                     const std::vector<std::vector<std::string>>& references);

bool ExactMatch(std::string_view prediction, std::string_view reference);

// JSON extraction. A generation parses when its text (trimmed, and inside a ``` fence if it is
// wrapped in one) is one JSON value.
bool ParsesAsJson(std::string_view generation);
struct FieldCounts {
  int64_t predicted = 0, reference = 0, correct = 0;
  double Precision() const;
  double Recall() const;
  double F1() const;
};
// The (path, value) pairs of a generation that are also the reference's, added to `counts`. A
// generation that does not parse contributes no pairs; the reference must be a JSON object
// (text) — else Error naming what it got.
void AddJsonFields(std::string_view generation, std::string_view reference, FieldCounts& counts);

// The unbiased pass@k for `correct` of `n` samples (k <= n).
double PassAtK(int64_t n, int64_t correct, int64_t k);

// Generated texts scored against their references by the metrics named, all samples of all
// examples together: exact_match, rouge_l and json_parse_rate are means over the samples, bleu is
// corpus BLEU over them, json_field_f1 is micro-averaged over their fields, and pass@K (K <=
// the samples per problem; "pass_at_k": pass@1 and pass@n for n samples) the mean over problems.
// Everything the figures come from is one vector of sums, so that ranks scoring their share of
// the examples add them up in one collective.
class GenerationScorer {
 public:
  // Throws Error for a name it does not know, listing those it does, or a pass@K above
  // `samples_per_problem`.
  explicit GenerationScorer(std::vector<std::string> metrics, int64_t samples_per_problem = 1);
  // The metrics a training evaluation can judge by (pass@K aside, whose names vary with K).
  static const std::vector<std::string>& Known();

  // `where` (file:line) names the example in errors: json_field_f1's reference must be a JSON object.
  void Add(const std::string& generated, const std::string& reference, const std::string& where);
  // A problem's samples run against its tests: `passed` of samples_per_problem.
  void AddTested(int64_t passed);
  // Whether pass@K is asked for (the samples must then be run: common/code_sandbox.h).
  bool RunsTests() const { return !pass_k_.empty(); }

  std::vector<double>& sums() { return sums_; }
  // {"generated": samples, and each metric by name}.
  nlohmann::json Metrics() const;

 private:
  double& Sum(size_t index) { return sums_[index]; }
  std::vector<std::string> metrics_;
  int64_t samples_per_problem_;
  std::vector<int64_t> pass_k_;  // the pass@K asked for
  std::vector<double> sums_;     // the layout: generation_metrics.cc's SumIndex, then pass@K's
};
}  // namespace shardtune
