#include "common/text_augmentation.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/hash_mix.h"

namespace shardtune {

namespace {

// Function words are not replaced: their "synonyms" in WordNet are other senses entirely
// ("a" -> "vitamin a").
const std::set<std::string>& StopWords() {
  static const std::set<std::string> kWords = {
      "a",     "about",  "above", "after", "again", "all",    "am",   "an",    "and",   "any",     "are",
      "as",    "at",     "be",    "been",  "being", "below",  "both", "but",   "by",    "can",     "could",
      "did",   "do",     "does",  "doing", "down",  "each",   "few",  "for",   "from",  "had",     "has",
      "have",  "having", "he",    "her",   "here",  "hers",   "him",  "his",   "how",   "i",       "if",
      "in",    "into",   "is",    "it",    "its",   "just",   "me",   "more",  "most",  "my",      "no",
      "nor",   "not",    "now",   "of",    "off",   "on",     "once", "only",  "or",    "other",   "our",
      "out",   "over",   "own",   "same",  "she",   "should", "so",   "some",  "such",  "than",    "that",
      "the",   "their",  "them",  "then",  "there", "these",  "they", "this",  "those", "through", "to",
      "too",   "under",  "until", "up",    "very",  "was",    "we",   "were",  "what",  "when",    "where",
      "which", "while",  "who",   "whom",  "why",   "will",   "with", "would", "you",   "your"};
  return kWords;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

bool IsPunctuation(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x80 && !std::isalnum(u) && c != '_';
}

// A word cut into its leading punctuation, its core and its trailing punctuation.
struct WordParts {
  std::string lead, core, trail;
};
WordParts Parts(const std::string& word) {
  size_t begin = 0, end = word.size();
  while (begin < end && IsPunctuation(word[begin])) ++begin;
  while (end > begin && IsPunctuation(word[end - 1])) --end;
  return {word.substr(0, begin), word.substr(begin, end - begin), word.substr(end)};
}

// `synonym` in place of `word`: its punctuation kept, capitalized as it was.
std::vector<std::string> Replacement(const std::string& word, std::string synonym) {
  const WordParts p = Parts(word);
  if (!p.core.empty() && p.core[0] >= 'A' && p.core[0] <= 'Z' && synonym[0] >= 'a' && synonym[0] <= 'z') {
    synonym[0] = static_cast<char>(synonym[0] - 'a' + 'A');
  }
  std::vector<std::string> words = SplitWords(synonym);
  words.front() = p.lead + words.front();
  words.back() += p.trail;
  return words;
}

enum class Operation { kSynonymReplacement, kRandomInsertion, kRandomSwap, kRandomDeletion };

class Augmenter {
 public:
  Augmenter(TaggedWords sentence, const Synonyms& synonyms, uint64_t seed)
      : s_(std::move(sentence)), synonyms_(synonyms), rng_(seed) {
    if (s_.tags.empty()) s_.tags.assign(s_.words.size(), "");
  }

  TaggedWords Apply(Operation op, double rate) {
    const auto n = std::max<size_t>(1, static_cast<size_t>(rate * static_cast<double>(s_.words.size())));
    switch (op) {
      case Operation::kSynonymReplacement:
        ReplaceSynonyms(n);
        break;
      case Operation::kRandomInsertion:
        for (size_t i = 0; i < n; ++i) InsertSynonym();
        break;
      case Operation::kRandomSwap:
        for (size_t i = 0; i < n; ++i) Swap();
        break;
      case Operation::kRandomDeletion:
        Delete(rate);
        break;
    }
    return s_;
  }

 private:
  // Words outside entities: every word of an untagged sentence, the O words of a tagged one.
  bool Editable(size_t i) const { return s_.tags[i].empty() || s_.tags[i] == "O"; }
  std::string NewTag() const { return s_.tags.empty() || s_.tags[0].empty() ? "" : "O"; }
  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }

  std::vector<std::string> SynonymsOf(size_t i) const {
    const std::string core = Lower(Parts(s_.words[i]).core);
    if (core.empty() || StopWords().count(core)) return {};
    return synonyms_.Of(core);
  }

  void Put(size_t at, size_t remove, const std::vector<std::string>& words) {
    const std::string tag = NewTag();
    s_.words.erase(s_.words.begin() + static_cast<int64_t>(at), s_.words.begin() + static_cast<int64_t>(at + remove));
    s_.tags.erase(s_.tags.begin() + static_cast<int64_t>(at), s_.tags.begin() + static_cast<int64_t>(at + remove));
    s_.words.insert(s_.words.begin() + static_cast<int64_t>(at), words.begin(), words.end());
    s_.tags.insert(s_.tags.begin() + static_cast<int64_t>(at), words.size(), tag);
  }

  void ReplaceSynonyms(size_t n) {
    // n distinct words that have synonyms, in a random order, each replaced by a random synonym.
    std::vector<size_t> order(s_.words.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng_);
    std::vector<std::pair<size_t, std::vector<std::string>>> chosen;
    for (const size_t i : order) {
      if (chosen.size() == n) break;
      if (!Editable(i)) continue;
      const std::vector<std::string> options = SynonymsOf(i);
      if (!options.empty()) chosen.emplace_back(i, Replacement(s_.words[i], options[Pick(options.size())]));
    }
    // From the back, so that earlier positions stay valid when a synonym has several words.
    std::sort(chosen.begin(), chosen.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (const auto& [i, words] : chosen) Put(i, 1, words);
  }

  void InsertSynonym() {
    // A synonym of a random word outside entities (of up to 10 tried) at a random place that
    // splits no entity.
    for (int attempt = 0; attempt < 10 && !s_.words.empty(); ++attempt) {
      const size_t source = Pick(s_.words.size());
      if (!Editable(source)) continue;
      const std::vector<std::string> options = SynonymsOf(source);
      if (options.empty()) continue;
      std::vector<size_t> places;
      for (size_t p = 0; p <= s_.words.size(); ++p) {
        if (p == s_.words.size() || s_.tags[p].rfind("I-", 0) != 0) places.push_back(p);
      }
      Put(places[Pick(places.size())], 0, SplitWords(options[Pick(options.size())]));
      return;
    }
  }

  void Swap() {
    std::vector<size_t> editable;
    for (size_t i = 0; i < s_.words.size(); ++i) {
      if (Editable(i)) editable.push_back(i);
    }
    if (editable.size() < 2) return;
    const size_t a = Pick(editable.size());
    const size_t b = (a + 1 + Pick(editable.size() - 1)) % editable.size();  // another one
    std::swap(s_.words[editable[a]], s_.words[editable[b]]);
  }

  void Delete(double p) {
    if (s_.words.size() <= 1) return;
    std::bernoulli_distribution drop(p);
    TaggedWords kept;
    for (size_t i = 0; i < s_.words.size(); ++i) {
      if (Editable(i) && drop(rng_)) continue;
      kept.words.push_back(s_.words[i]);
      kept.tags.push_back(s_.tags[i]);
    }
    if (kept.words.empty()) {  // never nothing: one word of the sentence stays
      const size_t i = Pick(s_.words.size());
      kept = {{s_.words[i]}, {s_.tags[i]}};
    }
    s_ = std::move(kept);
  }

  TaggedWords s_;
  const Synonyms& synonyms_;
  std::mt19937_64 rng_;
};

}  // namespace

std::vector<std::string> SplitWords(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

std::string JoinWords(const std::vector<std::string>& words) {
  std::string text;
  for (const std::string& w : words) text += (text.empty() ? "" : " ") + w;
  return text;
}

Synonyms Synonyms::Load(const std::filesystem::path& dir) {
  Synonyms table;
  for (const char* part : {"data.noun", "data.verb", "data.adj", "data.adv"}) {
    const std::filesystem::path file = dir / part;
    std::ifstream in(file);
    if (!in) Fail(ErrorCode::kNotFound, "{}: cannot open the WordNet data file", file.string());
    int64_t number = 0;
    for (std::string line; std::getline(in, line);) {
      ++number;
      if (line.empty() || line[0] == ' ') continue;  // the license header
      // offset lex_filenum ss_type w_cnt (2 hex digits) then w_cnt pairs of word and lex_id.
      std::istringstream fields(line);
      std::string offset, lexfile, type, count;
      fields >> offset >> lexfile >> type >> count;
      size_t words = 0;
      try {
        words = std::stoul(count, nullptr, 16);
      } catch (const std::exception&) {
        Fail(ErrorCode::kInvalidArgument, "{}:{}: expected a hexadecimal word count, got '{}'", file.string(), number,
             count);
      }
      std::vector<std::string> synset;
      for (size_t k = 0; k < words; ++k) {
        std::string word, lex_id;
        if (!(fields >> word >> lex_id)) {
          Fail(ErrorCode::kInvalidArgument, "{}:{}: {} words announced, {} found", file.string(), number, words, k);
        }
        if (const size_t marker = word.find('('); marker != std::string::npos) word.resize(marker);  // "(a)", "(p)"
        std::replace(word.begin(), word.end(), '_', ' ');
        synset.push_back(Lower(word));
      }
      if (synset.size() > 1) table.synsets_.push_back(std::move(synset));
    }
  }
  if (table.synsets_.empty())
    Fail(ErrorCode::kInvalidArgument, "{}: no synonym sets in the WordNet data", dir.string());
  for (size_t s = 0; s < table.synsets_.size(); ++s) {
    for (const std::string& word : table.synsets_[s]) table.index_[word].push_back(static_cast<int32_t>(s));
  }
  return table;
}

Synonyms Synonyms::FromSets(const std::vector<std::vector<std::string>>& sets) {
  Synonyms table;
  table.synsets_ = sets;
  for (size_t s = 0; s < sets.size(); ++s) {
    for (const std::string& word : sets[s]) table.index_[word].push_back(static_cast<int32_t>(s));
  }
  return table;
}

std::vector<std::string> Synonyms::Of(const std::string& word) const {
  const std::string key = Lower(Parts(word).core);
  const auto it = index_.find(key);
  if (it == index_.end()) return {};
  std::set<std::string> found;
  for (const int32_t s : it->second) {
    for (const std::string& w : synsets_[static_cast<size_t>(s)]) {
      if (w != key) found.insert(w);
    }
  }
  return {found.begin(), found.end()};
}

std::vector<TaggedWords> Augment(const TaggedWords& sentence, const AugmentOptions& options, const Synonyms& synonyms,
                                 uint64_t example_seed) {
  ST_CHECK(sentence.tags.empty() || sentence.tags.size() == sentence.words.size(), "{} words but {} tags",
           sentence.words.size(), sentence.tags.size());
  std::vector<std::pair<Operation, double>> operations;
  if (options.synonym_replacement > 0)
    operations.emplace_back(Operation::kSynonymReplacement, options.synonym_replacement);
  if (options.random_insertion > 0) operations.emplace_back(Operation::kRandomInsertion, options.random_insertion);
  if (options.random_swap > 0) operations.emplace_back(Operation::kRandomSwap, options.random_swap);
  if (options.random_deletion > 0) operations.emplace_back(Operation::kRandomDeletion, options.random_deletion);
  std::vector<TaggedWords> copies;
  if (operations.empty() || sentence.words.empty()) return copies;
  for (int64_t c = 0; c < options.copies; ++c) {
    const uint64_t seed =
        MixBits(MixBits(options.seed ^ 0x6564612d61756721ULL) ^ example_seed) + static_cast<uint64_t>(c);
    const auto& [op, rate] = operations[static_cast<size_t>(c) % operations.size()];
    TaggedWords copy = Augmenter(sentence, synonyms, MixBits(seed)).Apply(op, rate);
    if (sentence.tags.empty()) copy.tags.clear();
    // A copy no operation changed (no synonyms found, two equal words swapped) is the example
    // again: left out, as data.dedup would remove it.
    if (copy.words != sentence.words) copies.push_back(std::move(copy));
  }
  return copies;
}

}  // namespace shardtune
