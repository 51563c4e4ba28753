#pragma once
// Exact and near-duplicate texts in one pass, in time linear in the data: each text's shingles
// (character or word n-grams of its normalized form) are summarized by a MinHash signature, whose
// bands are hashed into buckets (locality-sensitive hashing), so a text is compared only with the
// texts that share a bucket with it; the share of equal signature entries estimates the Jaccard
// similarity of the two shingle sets (Broder, "On the resemblance and containment of documents",
// 1997; Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets", chapter 3).
//
// Deterministic: the hash functions are fixed, and a text is only ever compared with texts
// added before it.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace shardtune {

enum class ShingleUnit { kCharacters, kWords };

struct NearDuplicateOptions {
  double threshold = 0.85;  // Jaccard similarity at and above which two texts are near duplicates
  ShingleUnit unit = ShingleUnit::kCharacters;
  int ngram = 5;  // characters (Unicode code points) or words per shingle
};

// The form texts are compared in: ASCII letters lowercased, ASCII punctuation removed, runs of
// whitespace made one space, leading and trailing space trimmed. Other characters are kept as
// they are (so "Café" and "café" differ only in the C).
std::string NormalizeForComparison(std::string_view text);

// The distinct 64-bit hashes of a text's shingles, sorted. A normalized text shorter than one
// shingle is one shingle (itself, possibly empty).
std::vector<uint64_t> ShingleHashes(std::string_view text, const NearDuplicateOptions& options);

// |a ∩ b| / |a ∪ b| of two sorted sets (1 when both are empty).
double JaccardSimilarity(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b);

// A fingerprint's exact hash as a hash table's key (it is a hash already).
struct ExactHash {
  size_t operator()(const std::array<uint64_t, 2>& h) const { return static_cast<size_t>(h[0]); }
};

// What a text is, compared with the texts indexed before it.
struct DuplicateMatch {
  enum class Kind { kNone, kExact, kNear };
  Kind kind = Kind::kNone;
  int64_t of = -1;          // the id of the indexed text it duplicates
  double similarity = 0.0;  // estimated Jaccard similarity (1 for exact duplicates)
};
const char* ToString(DuplicateMatch::Kind kind);

class NearDuplicateIndex {
 public:
  static constexpr int kPermutations = 128;

  // A text's summary: a hash of its exact bytes and the MinHash signature of its shingles.
  struct Fingerprint {
    std::array<uint64_t, 2> exact{};
    std::array<uint32_t, kPermutations> signature{};
  };

  explicit NearDuplicateIndex(NearDuplicateOptions options);

  Fingerprint Fingerprinted(std::string_view text) const;
  // The first indexed text (in the order added) that `fingerprint`'s text duplicates exactly,
  // else one it nearly duplicates, else kNone.
  DuplicateMatch Find(const Fingerprint& fingerprint) const;
  // Every indexed text it duplicates exactly or nearly, in the order added.
  std::vector<DuplicateMatch> FindAll(const Fingerprint& fingerprint) const;
  void Add(int64_t id, const Fingerprint& fingerprint);

  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  int bands() const { return bands_; }
  int rows() const { return rows_; }

 private:
  uint64_t BandKey(const Fingerprint& fingerprint, int band) const;
  double Similarity(const Fingerprint& fingerprint, int64_t slot) const;
  template <typename Visit>
  void ForEachCandidate(const Fingerprint& fingerprint, Visit visit) const;

  NearDuplicateOptions options_;
  int bands_ = 0, rows_ = 0;  // bands_ * rows_ <= kPermutations signature entries are banded
  std::array<uint64_t, kPermutations> multipliers_{}, offsets_{};
  // Slot k holds the k-th text added: its id, exact hash and signature. Each band maps a band key to the
  // last slot that had it; next_[band][slot] chains to the slot before with the same key.
  std::vector<int64_t> ids_;
  std::vector<std::array<uint64_t, 2>> exacts_;
  std::vector<std::array<uint32_t, kPermutations>> signatures_;
  std::vector<std::unordered_map<uint64_t, int32_t>> buckets_;
  std::vector<std::vector<int32_t>> next_;
  std::unordered_map<std::array<uint64_t, 2>, int64_t, ExactHash> exact_;  // exact hash -> first id
};

// Duplicates within a list of texts and copies of held-out texts among them.
struct DuplicatePair {
  int64_t index = 0;  // the later text
  int64_t of = 0;     // the earlier text (or, for leaks, the held-out text it copies)
  DuplicateMatch::Kind kind = DuplicateMatch::Kind::kExact;
  double similarity = 1.0;
};
struct DuplicateReport {
  // Each text of `texts` that duplicates an earlier one: exactly (the first identical text), or
  // else nearly (the first matching text that is not itself a duplicate: a chain of small edits
  // is compared with its first link, not link by link).
  std::vector<DuplicatePair> duplicates;
  int64_t exact = 0, near = 0;
};
DuplicateReport FindDuplicates(const std::vector<std::string>& texts, const NearDuplicateOptions& options);

// For each of `texts` (a training set), the held-out texts (a validation set) it copies exactly
// or nearly: pairs (index into texts, of = index into held_out), in the order of texts.
std::vector<DuplicatePair> FindCopies(const std::vector<std::string>& texts, const std::vector<int64_t>& among,
                                      const std::vector<std::string>& held_out, const std::vector<int64_t>& held,
                                      const NearDuplicateOptions& options);

}  // namespace shardtune
