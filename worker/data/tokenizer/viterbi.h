#pragma once
// The best segmentation of a character sequence under a unigram model (Kudo, 2018): the
// Viterbi path through the lattice of pieces, shared by tokenizer.json's Unigram model and
// SentencePiece's.

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shardtune {

struct ScoredPiece {
  int64_t id;
  double score;
};

// `lookup(text)` gives the piece `text` is, if any. A character no piece covers costs
// `unknown_score`. Returns the path, each entry a piece id, or -1 - i for unknown character i.
template <typename Lookup>
std::vector<int64_t> ViterbiSegment(const std::vector<std::string>& characters, size_t max_piece_chars,
                                    double unknown_score, Lookup lookup) {
  const size_t n = characters.size();
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  std::vector<double> best(n + 1, kNone);
  std::vector<int64_t> best_id(n + 1, 0);
  std::vector<size_t> best_start(n + 1, 0);
  best[0] = 0;
  for (size_t end = 1; end <= n; ++end) {
    std::string candidate;
    for (size_t start = end; start-- > 0 && end - start <= max_piece_chars;) {
      candidate = characters[start] + candidate;
      if (best[start] == kNone) continue;
      if (const std::optional<ScoredPiece> piece = lookup(candidate)) {
        const double score = best[start] + piece->score;
        if (score > best[end]) best[end] = score, best_id[end] = piece->id, best_start[end] = start;
      }
    }
    if (best[end] == kNone) {
      best[end] = best[end - 1] + unknown_score, best_id[end] = -1 - static_cast<int64_t>(end - 1),
      best_start[end] = end - 1;
    }
  }
  std::vector<int64_t> path;
  for (size_t end = n; end > 0; end = best_start[end]) path.push_back(best_id[end]);
  return {path.rbegin(), path.rend()};
}

}  // namespace shardtune
