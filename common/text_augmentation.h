#pragma once
// Easy data augmentation (Wei and Zou, "EDA: Easy Data Augmentation Techniques for Boosting
// Performance on Text Classification Tasks", 2019): new training sentences made from a sentence's
// words by synonym replacement (synonyms from WordNet), random insertion of a synonym, random
// swap and random deletion. For NER (tagged words), the entities stay whole and their tags stay
// aligned: only words tagged O are replaced, swapped or deleted, and inserted words, tagged O, go
// only where no entity is interrupted (Dai and Adel, "An Analysis of Simple Data Augmentation
// for Named Entity Recognition", 2020, keep tags the same way). Deterministic for a seed.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace shardtune {

// WordNet's synonyms: every word that shares a synset with a word, read from a WordNet 3.0
// database directory (data.noun, data.verb, data.adj, data.adv; Debian's wordnet-base installs
// /usr/share/wordnet).
class Synonyms {
 public:
  // The database in `dir`; Error (naming the file) when a data file is missing or malformed.
  static Synonyms Load(const std::filesystem::path& dir);
  // Debian's place for it.
  static std::filesystem::path DefaultDir() { return "/usr/share/wordnet"; }
  // A word's synonyms (lowercase; multiword ones with spaces), sorted, without the word itself.
  // `word` is looked up lowercased, without the punctuation around it.
  std::vector<std::string> Of(const std::string& word) const;
  bool empty() const { return synsets_.empty(); }
  // For tests: a table built from synonym sets directly.
  static Synonyms FromSets(const std::vector<std::vector<std::string>>& sets);

 private:
  std::vector<std::vector<std::string>> synsets_;
  std::map<std::string, std::vector<int32_t>> index_;  // word -> its synsets
};

struct AugmentOptions {
  int64_t copies = 0;  // new sentences per training example
  // Each copy applies one of the operations with a rate above 0, in turn: synonym replacement
  // and random insertion change max(1, rate * words) words, random swap swaps that many pairs,
  // random deletion deletes each word with its rate as probability.
  double synonym_replacement = 0.1;
  double random_insertion = 0.1;
  double random_swap = 0.1;
  double random_deletion = 0.1;
  uint64_t seed = 0;
};

// A sentence as words, with a tag per word (NER) or none (tags empty).
struct TaggedWords {
  std::vector<std::string> words;
  std::vector<std::string> tags;
};

// The `copies` new sentences of one example, less those no operation changed (a sentence without
// synonyms, say). `example_seed` makes each example's different (the caller passes the
// example's index); synonyms may be empty (synonym replacement and insertion then change
// nothing, and the caller warns).
std::vector<TaggedWords> Augment(const TaggedWords& sentence, const AugmentOptions& options, const Synonyms& synonyms,
                                 uint64_t example_seed);

// Whitespace-separated words of a text, and back.
std::vector<std::string> SplitWords(const std::string& text);
std::string JoinWords(const std::vector<std::string>& words);

}  // namespace shardtune
