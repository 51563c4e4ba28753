// Near-duplicate detection (common/near_duplicates.h) against its baseline, exact Jaccard
// similarity over every pair: on a set small enough for the baseline, the two are timed side by
// side and LSH's answers are scored against the exact ones (recall and precision of "this text
// nearly copies an earlier one"); then LSH alone on a million short examples, for throughput and
// memory. Texts: 8 to 30 made-up words each, 5% exact copies and 5% one-letter typos planted.
//   dedup_bench [MILLION_EXAMPLES=1000000] [BASELINE_EXAMPLES=4000]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "common/near_duplicates.h"

namespace {

using shardtune::NearDuplicateOptions;

std::vector<std::string> MakeTexts(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> vocabulary;
  std::uniform_int_distribution<int> letter('a', 'z'), length(2, 9);
  for (int i = 0; i < 5000; ++i) {
    std::string word;
    for (int k = length(rng); k > 0; --k) word.push_back(static_cast<char>(letter(rng)));
    vocabulary.push_back(word);
  }
  std::uniform_int_distribution<size_t> pick(0, vocabulary.size() - 1);
  std::uniform_int_distribution<int> words(8, 30), percent(0, 99);
  std::vector<std::string> texts;
  texts.reserve(n);
  while (texts.size() < n) {
    const int roll = percent(rng);
    if (texts.size() > 10 && roll < 10) {
      std::string copy = texts[std::uniform_int_distribution<size_t>(0, texts.size() - 1)(rng)];
      if (roll < 5) {  // a typo: one letter replaced
        const size_t at = std::uniform_int_distribution<size_t>(0, copy.size() - 1)(rng);
        if (copy[at] != ' ') copy[at] = copy[at] == 'q' ? 'z' : 'q';
      }
      texts.push_back(copy);
      continue;
    }
    std::string text;
    for (int w = words(rng); w > 0; --w) text += (text.empty() ? "" : " ") + vocabulary[pick(rng)];
    texts.push_back(text);
  }
  return texts;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double PeakRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t million = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
  const size_t small = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 4000;
  const NearDuplicateOptions options;  // Jaccard >= 0.85 over character 5-grams

  // Side by side on `small` texts: every pair's exact Jaccard (baseline) and LSH.
  const std::vector<std::string> texts = MakeTexts(small, 1);
  auto start = std::chrono::steady_clock::now();
  std::vector<std::vector<uint64_t>> shingles;
  for (const std::string& t : texts) shingles.push_back(shardtune::ShingleHashes(t, options));
  std::vector<bool> truth(texts.size(), false);  // nearly or exactly copies an earlier text
  for (size_t i = 0; i < texts.size(); ++i) {
    for (size_t j = 0; j < i && !truth[i]; ++j) {
      truth[i] = texts[i] == texts[j] || shardtune::JaccardSimilarity(shingles[i], shingles[j]) >= options.threshold;
    }
  }
  const double baseline_s = Seconds(start);
  start = std::chrono::steady_clock::now();
  const shardtune::DuplicateReport report = shardtune::FindDuplicates(texts, options);
  const double lsh_s = Seconds(start);
  int64_t found = 0, right = 0, real = 0;
  std::vector<bool> flagged(texts.size(), false);
  for (const auto& d : report.duplicates) flagged[static_cast<size_t>(d.index)] = true;
  for (size_t i = 0; i < texts.size(); ++i) {
    real += truth[i];
    found += flagged[i];
    right += truth[i] && flagged[i];
  }
  std::printf("### Near-duplicate detection (Jaccard >= %.2f, character 5-grams, 128 MinHash values)\n",
              options.threshold);
  std::printf("%zu short examples (8-30 words, 5%% exact copies, 5%% one-letter typos); one core\n\n", small);
  std::printf(
      "| method | seconds | examples/s | duplicates found | recall | precision | ratio to baseline (speed) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::printf("| every pair, exact Jaccard (baseline) | %.2f | %.0f | %lld | 1.000 | 1.000 | 1.00 |\n", baseline_s,
              static_cast<double>(small) / baseline_s, static_cast<long long>(real));
  std::printf("| MinHash + LSH (shardtune) | %.3f | %.0f | %lld | %.3f | %.3f | %.0f |\n\n", lsh_s,
              static_cast<double>(small) / lsh_s, static_cast<long long>(found),
              real ? static_cast<double>(right) / static_cast<double>(real) : 1.0,
              found ? static_cast<double>(right) / static_cast<double>(found) : 1.0, baseline_s / lsh_s);

  // Scale: LSH alone.
  const std::vector<std::string> many = MakeTexts(million, 2);
  const double rss_before = PeakRssMb();
  start = std::chrono::steady_clock::now();
  const shardtune::DuplicateReport big = shardtune::FindDuplicates(many, options);
  const double big_s = Seconds(start);
  std::printf(
      "%zu examples: %.1f s (%.0f examples/s), %lld exact and %lld near duplicates; peak RSS %.0f MB "
      "(%.0f MB of it the texts and the generator)\n",
      million, big_s, static_cast<double>(million) / big_s, static_cast<long long>(big.exact),
      static_cast<long long>(big.near), PeakRssMb(), rss_before);
  return 0;
}
