#include "common/near_duplicates.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/hash_mix.h"

namespace shardtune {

namespace {

// FNV-1a over the bytes, from `basis`, finished by MixBits.
uint64_t HashBytes(std::string_view bytes, uint64_t basis) {
  uint64_t h = basis;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return MixBits(h ^ bytes.size());
}

bool IsAsciiPunctuation(unsigned char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}

bool IsAsciiSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The byte offsets where each UTF-8 code point of `text` starts, and text.size() at the end.
std::vector<size_t> CodePointStarts(std::string_view text) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) starts.push_back(i);
  }
  starts.push_back(text.size());
  return starts;
}

// The probability that two texts of Jaccard similarity s share at least one of `bands` buckets
// of `rows` signature entries each.
double CandidateProbability(double s, int bands, int rows) { return 1.0 - std::pow(1.0 - std::pow(s, rows), bands); }

// The banding for a threshold: of those that make a pair at the threshold a candidate with
// probability at least 0.99 (so near duplicates are rarely missed), the one with the fewest
// candidates below it (each costs a comparison, never a wrong answer: candidates are checked).
std::pair<int, int> ChooseBanding(double threshold) {
  std::pair<int, int> best{16, 8};
  double best_cost = std::numeric_limits<double>::infinity();
  for (int bands = 1; bands <= NearDuplicateIndex::kPermutations; ++bands) {
    for (int rows = 1; bands * rows <= NearDuplicateIndex::kPermutations; ++rows) {
      if (CandidateProbability(threshold, bands, rows) < 0.99) continue;
      double below = 0.0;  // the area under the candidate curve left of the threshold
      constexpr int kSteps = 200;
      for (int k = 0; k < kSteps; ++k) {
        below += CandidateProbability(threshold * (k + 0.5) / kSteps, bands, rows) * threshold / kSteps;
      }
      if (below < best_cost) {
        best_cost = below;
        best = {bands, rows};
      }
    }
  }
  return best;
}

}  // namespace

const char* ToString(DuplicateMatch::Kind kind) {
  switch (kind) {
    case DuplicateMatch::Kind::kExact:
      return "exact";
    case DuplicateMatch::Kind::kNear:
      return "near";
    case DuplicateMatch::Kind::kNone:
      break;
  }
  return "none";
}

std::string NormalizeForComparison(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool space = false;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsAsciiSpace(c)) {
      space = !out.empty();
      continue;
    }
    if (IsAsciiPunctuation(c)) continue;
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch);
  }
  return out;
}

std::vector<uint64_t> ShingleHashes(std::string_view text, const NearDuplicateOptions& options) {
  ST_CHECK(options.ngram >= 1, "shingles of {} units", options.ngram);
  const std::string normal = NormalizeForComparison(text);
  const std::string_view view = normal;
  // Unit boundaries: code points, or words (the spaces between them are single now).
  std::vector<size_t> starts;
  if (options.unit == ShingleUnit::kCharacters) {
    starts = CodePointStarts(view);
  } else {
    starts.push_back(0);
    for (size_t i = 0; i < view.size(); ++i) {
      if (view[i] == ' ') starts.push_back(i + 1);
    }
    starts.push_back(view.size() + 1);  // as if the text ended with a space
  }
  const size_t units = starts.size() - 1;
  const auto n = static_cast<size_t>(options.ngram);
  std::vector<uint64_t> hashes;
  if (units <= n) {
    hashes.push_back(HashBytes(view, 0));
  } else {
    hashes.reserve(units - n + 1);
    for (size_t i = 0; i + n <= units; ++i) {
      const size_t end = options.unit == ShingleUnit::kCharacters ? starts[i + n] : starts[i + n] - 1;
      hashes.push_back(HashBytes(view.substr(starts[i], end - starts[i]), 0));
    }
  }
  std::sort(hashes.begin(), hashes.end());
  hashes.erase(std::unique(hashes.begin(), hashes.end()), hashes.end());
  return hashes;
}

double JaccardSimilarity(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  if (a.empty() && b.empty()) return 1.0;
  size_t common = 0;
  for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    if (a[i] == b[j]) {
      ++common, ++i, ++j;
    } else if (a[i] < b[j]) {
      ++i;
    } else {
      ++j;
    }
  }
  return static_cast<double>(common) / static_cast<double>(a.size() + b.size() - common);
}

NearDuplicateIndex::NearDuplicateIndex(NearDuplicateOptions options) : options_(options) {
  ST_CHECK(options_.threshold > 0.0 && options_.threshold <= 1.0, "near-duplicate threshold {}", options_.threshold);
  std::tie(bands_, rows_) = ChooseBanding(options_.threshold);
  // The i-th hash function is multiply-shift: (a_i * h + b_i) >> 32 with a_i odd, fixed seeds.
  uint64_t state = 0x5348415244545545ULL;  // "SHARDTUE"
  for (int i = 0; i < kPermutations; ++i) {
    multipliers_[i] = MixBits(state += 0x9e3779b97f4a7c15ULL) | 1;
    offsets_[i] = MixBits(state += 0x9e3779b97f4a7c15ULL);
  }
  buckets_.resize(static_cast<size_t>(bands_));
  next_.resize(static_cast<size_t>(bands_));
}

NearDuplicateIndex::Fingerprint NearDuplicateIndex::Fingerprinted(std::string_view text) const {
  Fingerprint f;
  f.exact = {HashBytes(text, 0xcbf29ce484222325ULL), HashBytes(text, 0x84222325cbf29ce4ULL)};
  f.signature.fill(std::numeric_limits<uint32_t>::max());
  for (const uint64_t h : ShingleHashes(text, options_)) {
    for (int i = 0; i < kPermutations; ++i) {
      f.signature[i] = std::min(f.signature[i], static_cast<uint32_t>((multipliers_[i] * h + offsets_[i]) >> 32));
    }
  }
  return f;
}

uint64_t NearDuplicateIndex::BandKey(const Fingerprint& fingerprint, int band) const {
  uint64_t key = MixBits(static_cast<uint64_t>(band) + 1);
  for (int r = 0; r < rows_; ++r) key = MixBits(key ^ fingerprint.signature[static_cast<size_t>(band * rows_ + r)]);
  return key;
}

double NearDuplicateIndex::Similarity(const Fingerprint& fingerprint, int64_t slot) const {
  const auto& other = signatures_[static_cast<size_t>(slot)];
  int equal = 0;
  for (int i = 0; i < kPermutations; ++i) equal += fingerprint.signature[i] == other[i] ? 1 : 0;
  return static_cast<double>(equal) / kPermutations;
}

template <typename Visit>
void NearDuplicateIndex::ForEachCandidate(const Fingerprint& fingerprint, Visit visit) const {
  // A slot may share several bands with the text: each is visited once, in the order added. A
  // band's bucket is walked from its newest slot back, at most kBucketWalk of them: texts that
  // share long boilerplate crowd into the same buckets, and an unbounded walk would make the
  // search quadratic (a copy older than that many look-alikes in every band is missed).
  constexpr int kBucketWalk = 64;
  std::vector<int32_t> slots;
  for (int band = 0; band < bands_; ++band) {
    const auto& bucket = buckets_[static_cast<size_t>(band)];
    const auto it = bucket.find(BandKey(fingerprint, band));
    if (it == bucket.end()) continue;
    int walked = 0;
    for (int32_t slot = it->second; slot >= 0 && walked < kBucketWalk;
         slot = next_[static_cast<size_t>(band)][static_cast<size_t>(slot)], ++walked) {
      slots.push_back(slot);
    }
  }
  std::sort(slots.begin(), slots.end());
  slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
  for (const int32_t slot : slots) {
    if (!visit(slot)) return;
  }
}

DuplicateMatch NearDuplicateIndex::Find(const Fingerprint& fingerprint) const {
  const auto exact = exact_.find(fingerprint.exact);
  if (exact != exact_.end()) return {DuplicateMatch::Kind::kExact, exact->second, 1.0};
  DuplicateMatch match;
  ForEachCandidate(fingerprint, [&](int32_t slot) {
    const double similarity = Similarity(fingerprint, slot);
    if (similarity < options_.threshold) return true;
    match = {DuplicateMatch::Kind::kNear, ids_[static_cast<size_t>(slot)], similarity};
    return false;
  });
  return match;
}

std::vector<DuplicateMatch> NearDuplicateIndex::FindAll(const Fingerprint& fingerprint) const {
  std::vector<DuplicateMatch> matches;
  ForEachCandidate(fingerprint, [&](int32_t slot) {
    const double similarity = Similarity(fingerprint, slot);
    // Exact copies are among the candidates: their signatures agree in every band.
    if (exacts_[static_cast<size_t>(slot)] == fingerprint.exact) {
      matches.push_back({DuplicateMatch::Kind::kExact, ids_[static_cast<size_t>(slot)], 1.0});
    } else if (similarity >= options_.threshold) {
      matches.push_back({DuplicateMatch::Kind::kNear, ids_[static_cast<size_t>(slot)], similarity});
    }
    return true;
  });
  return matches;
}

void NearDuplicateIndex::Add(int64_t id, const Fingerprint& fingerprint) {
  ST_CHECK(ids_.size() < static_cast<size_t>(std::numeric_limits<int32_t>::max()), "more than 2^31 texts indexed");
  const auto slot = static_cast<int32_t>(ids_.size());
  ids_.push_back(id);
  exacts_.push_back(fingerprint.exact);
  signatures_.push_back(fingerprint.signature);
  for (int band = 0; band < bands_; ++band) {
    auto [it, inserted] = buckets_[static_cast<size_t>(band)].try_emplace(BandKey(fingerprint, band), slot);
    next_[static_cast<size_t>(band)].push_back(inserted ? -1 : it->second);
    it->second = slot;
  }
  exact_.try_emplace(fingerprint.exact, id);
}

DuplicateReport FindDuplicates(const std::vector<std::string>& texts, const NearDuplicateOptions& options) {
  DuplicateReport report;
  NearDuplicateIndex index(options);
  // Exact copies are looked up among all texts seen, duplicates included (a copy of a near
  // duplicate is still an exact copy); near ones among the texts kept.
  std::unordered_map<std::array<uint64_t, 2>, int64_t, ExactHash> seen;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto id = static_cast<int64_t>(i);
    const NearDuplicateIndex::Fingerprint fingerprint = index.Fingerprinted(texts[i]);
    const auto [first, inserted] = seen.try_emplace(fingerprint.exact, id);
    DuplicateMatch match;
    if (!inserted) {
      match = {DuplicateMatch::Kind::kExact, first->second, 1.0};
    } else {
      match = index.Find(fingerprint);
    }
    if (match.kind == DuplicateMatch::Kind::kNone) {
      index.Add(id, fingerprint);
      continue;
    }
    report.duplicates.push_back({id, match.of, match.kind, match.similarity});
    ++(match.kind == DuplicateMatch::Kind::kExact ? report.exact : report.near);
  }
  return report;
}

std::vector<DuplicatePair> FindCopies(const std::vector<std::string>& texts, const std::vector<int64_t>& among,
                                      const std::vector<std::string>& held_out, const std::vector<int64_t>& held,
                                      const NearDuplicateOptions& options) {
  NearDuplicateIndex index(options);
  for (const int64_t h : held) index.Add(h, index.Fingerprinted(held_out[static_cast<size_t>(h)]));
  std::vector<DuplicatePair> copies;
  for (const int64_t i : among) {
    for (const DuplicateMatch& m : index.FindAll(index.Fingerprinted(texts[static_cast<size_t>(i)]))) {
      copies.push_back({i, m.of, m.kind, m.similarity});
    }
  }
  return copies;
}

}  // namespace shardtune
