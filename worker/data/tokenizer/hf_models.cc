// tokenizer.json models: BPE, WordPiece and Unigram, one builder each, dispatched through Models().
#include <algorithm>
#include <queue>

#include "common/error.h"
#include "worker/data/tokenizer/hf_stages.h"
#include "worker/data/tokenizer/unicode.h"
#include "worker/data/tokenizer/viterbi.h"

namespace shardtune::hf {

void Model::SetVocab(std::unordered_map<std::string, int64_t> vocab) {
  vocab_ = std::move(vocab);
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab_) max_id = std::max(max_id, id);
  id_to_token_.assign(static_cast<size_t>(max_id + 1), "");
  for (const auto& [token, id] : vocab_) id_to_token_[static_cast<size_t>(id)] = token;
}

std::optional<std::vector<int64_t>> Model::ByteFallback(const std::string& character) const {
  std::vector<int64_t> bytes;
  for (unsigned char b : character) {
    if (const auto id = Find(fmt::format("<0x{:02X}>", static_cast<unsigned>(b)))) bytes.push_back(*id);
  }
  if (bytes.size() != character.size()) return std::nullopt;
  return bytes;
}

namespace {

std::unordered_map<std::string, int64_t> ParseVocabObject(const json& vocab, const std::string& where) {
  if (!vocab.is_object()) Malformed(where, "model.vocab must be an object of token -> id");
  std::unordered_map<std::string, int64_t> out;
  for (const auto& [token, id] : vocab.items())
    out[token] = TokenId(id, fmt::format("the vocab id of '{}'", token), where);
  return out;
}

// node[key] if it is a string, else `fallback` (the key absent or null).
std::string OptionalString(const json& node, const char* key, const std::string& fallback) {
  return node.contains(key) && node[key].is_string() ? node[key].get<std::string>() : fallback;
}

class Bpe : public Model {
 public:
  std::optional<int64_t> unk;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::string prefix;  // continuing_subword_prefix
  std::string suffix;  // end_of_word_suffix

  void AddMerge(const std::string& a, const std::string& b, int32_t rank, const std::string& where) {
    const auto ia = Find(a), ib = Find(b);
    const std::string joined = a + (prefix.empty() || b.rfind(prefix, 0) != 0 ? b : b.substr(prefix.size()));
    const auto ij = Find(joined);
    if (!ia || !ib || !ij)
      Malformed(where, fmt::format("merge {} ('{}' '{}') uses a token that is not in the vocabulary", rank, a, b));
    merges_.emplace(Key(*ia, *ib), Merge{rank, *ij});  // the first (lowest-rank) entry wins
  }

  void Encode(const std::string& piece, std::vector<int64_t>& out) const override {
    if (ignore_merges) {
      if (const auto id = Find(piece)) {
        out.push_back(*id);
        return;
      }
    }
    std::vector<int64_t> ids = Symbols(piece);
    MergeAll(ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }

 private:
  struct Merge {
    int32_t rank;
    int64_t id;
  };
  std::unordered_map<uint64_t, Merge> merges_;

  static uint64_t Key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  // The word's characters as token ids, before any merge: each character (with the subword
  // prefix and word suffix where they apply), else its bytes, else unk.
  std::vector<int64_t> Symbols(const std::string& piece) const {
    std::vector<int64_t> ids;
    const std::vector<std::string> characters = Utf8Characters(piece);
    bool last_unk = false;
    for (size_t i = 0; i < characters.size(); ++i) {
      std::string symbol = characters[i];
      if (i > 0 && !prefix.empty()) symbol = prefix + symbol;
      if (i + 1 == characters.size() && !suffix.empty()) symbol += suffix;
      if (const auto id = Find(symbol)) {
        ids.push_back(*id);
        last_unk = false;
        continue;
      }
      if (byte_fallback) {
        if (const auto bytes = ByteFallback(characters[i])) {
          ids.insert(ids.end(), bytes->begin(), bytes->end());
          last_unk = false;
          continue;
        }
      }
      // With neither byte fallback nor an unk token, tokenizers drops the character; so do we.
      if (!unk) continue;
      if (!(fuse_unk && last_unk)) ids.push_back(*unk);
      last_unk = true;
    }
    return ids;
  }

  // Applies merges lowest rank first (leftmost first among equal ranks), as tokenizers' BPE does,
  // on the symbols as a doubly linked list.
  void MergeAll(std::vector<int64_t>& ids) const {
    const size_t n = ids.size();
    if (n < 2) return;
    std::vector<int64_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<int64_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
    }
    struct Candidate {
      int32_t rank;
      int64_t left;
      int64_t left_id, right_id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto push = [&](int64_t left) {
      if (left < 0 || next[left] < 0) return;
      const auto it = merges_.find(Key(ids[left], ids[next[left]]));
      if (it != merges_.end()) queue.push({it->second.rank, left, ids[left], ids[next[left]]});
    };
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      const int64_t right = next[c.left];
      // Stale entries: a side was merged away or changed since this pair was queued.
      if (!alive[c.left] || right < 0 || ids[c.left] != c.left_id || ids[right] != c.right_id) continue;
      ids[c.left] = merges_.at(Key(c.left_id, c.right_id)).id;
      alive[right] = false;
      next[c.left] = next[right];
      if (next[right] >= 0) prev[next[right]] = c.left;
      push(prev[c.left]);
      push(c.left);
    }
    std::vector<int64_t> merged;
    for (int64_t i = 0; i >= 0; i = next[i]) merged.push_back(ids[i]);
    ids = std::move(merged);
  }
};

class WordPiece : public Model {
 public:
  int64_t unk = 0;
  std::string prefix = "##";
  size_t max_chars = 100;

  // Greedy longest-match-first, as BERT's WordPiece does.
  void Encode(const std::string& piece, std::vector<int64_t>& out) const override {
    const std::vector<std::string> characters = Utf8Characters(piece);
    if (characters.size() > max_chars) {
      out.push_back(unk);
      return;
    }
    std::vector<int64_t> ids;
    size_t start = 0;
    while (start < characters.size()) {
      std::optional<int64_t> found;
      size_t end = characters.size();
      for (; end > start; --end) {
        std::string candidate = start > 0 ? prefix : "";
        for (size_t k = start; k < end; ++k) candidate += characters[k];
        if ((found = Find(candidate))) break;
      }
      if (!found) {
        out.push_back(unk);  // one unknown piece makes the whole word unknown
        return;
      }
      ids.push_back(*found);
      start = end;
    }
    out.insert(out.end(), ids.begin(), ids.end());
  }
};

class Unigram : public Model {
 public:
  std::vector<double> scores;
  std::optional<int64_t> unk;
  bool byte_fallback = false;
  size_t max_piece_chars = 1;
  double min_score = 0;  // of the vocabulary: an unknown character costs min_score - 10

  void Encode(const std::string& piece, std::vector<int64_t>& out) const override {
    const std::vector<std::string> characters = Utf8Characters(piece);
    const std::vector<int64_t> path =
        ViterbiSegment(characters, max_piece_chars, min_score - 10.0, [this](const std::string& text) {
          const auto id = Find(text);
          return id ? std::optional<ScoredPiece>(ScoredPiece{*id, scores[static_cast<size_t>(*id)]}) : std::nullopt;
        });
    bool last_unknown = false;
    for (int64_t id : path) {
      if (id >= 0) {
        out.push_back(id);
        last_unknown = false;
        continue;
      }
      const std::string& character = characters[static_cast<size_t>(-1 - id)];
      if (byte_fallback) {
        if (const auto bytes = ByteFallback(character)) {
          out.insert(out.end(), bytes->begin(), bytes->end());
          last_unknown = false;
          continue;
        }
      }
      if (!unk)
        Fail(ErrorCode::kInvalidArgument, "character '{}' is not in the vocabulary and there is no unk_id", character);
      if (!last_unknown) out.push_back(*unk);  // consecutive unknowns are one token
      last_unknown = true;
    }
  }
};

// One entry of BPE's model.merges: "a b" or ["a", "b"].
void AddMergeEntry(Bpe& bpe, const json& merge, int32_t rank, const std::string& where) {
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    bpe.AddMerge(merge[0].get<std::string>(), merge[1].get<std::string>(), rank, where);
    return;
  }
  if (!merge.is_string())
    Malformed(where, fmt::format("merge {} must be \"a b\" or [\"a\", \"b\"], got {}", rank, merge.dump()));
  // Tokens may themselves hold spaces (Llama's "  "), so take the first split whose parts and
  // their concatenation are all tokens.
  const std::string text = merge.get<std::string>();
  size_t space = text.find(' ');
  while (space != std::string::npos && (space == 0 || space + 1 == text.size() || !bpe.Find(text.substr(0, space)) ||
                                        !bpe.Find(text.substr(space + 1)))) {
    space = text.find(' ', space + 1);
  }
  if (space == std::string::npos)
    Malformed(where, fmt::format("merge {} '{}' is not two vocabulary tokens separated by a space", rank, text));
  bpe.AddMerge(text.substr(0, space), text.substr(space + 1), rank, where);
}

std::unique_ptr<Model> BuildBpe(const json& node, const std::string& where) {
  auto bpe = std::make_unique<Bpe>();
  bpe->SetVocab(ParseVocabObject(Field(node, "vocab", where), where));
  if (node.contains("unk_token") && node["unk_token"].is_string()) {
    const std::string unk = node["unk_token"].get<std::string>();
    bpe->unk = bpe->Find(unk);
    if (!bpe->unk) Malformed(where, fmt::format("unk_token '{}' is not in the vocabulary", unk));
  }
  bpe->byte_fallback = node.value("byte_fallback", false);
  bpe->fuse_unk = node.value("fuse_unk", false);
  bpe->ignore_merges = node.value("ignore_merges", false);
  bpe->prefix = OptionalString(node, "continuing_subword_prefix", "");
  bpe->suffix = OptionalString(node, "end_of_word_suffix", "");
  const json& merges = Field(node, "merges", where);
  if (!merges.is_array()) Malformed(where, "model.merges must be a list");
  int32_t rank = 0;
  for (const json& merge : merges) AddMergeEntry(*bpe, merge, rank++, where);
  return bpe;
}

std::unique_ptr<Model> BuildWordPiece(const json& node, const std::string& where) {
  auto wp = std::make_unique<WordPiece>();
  wp->SetVocab(ParseVocabObject(Field(node, "vocab", where), where));
  const std::string unk = node.value("unk_token", std::string("[UNK]"));
  const auto id = wp->Find(unk);
  if (!id) Malformed(where, fmt::format("unk_token '{}' is not in the vocabulary", unk));
  wp->unk = *id;
  wp->prefix = node.value("continuing_subword_prefix", std::string("##"));
  wp->max_chars = static_cast<size_t>(CountField(node, "max_input_chars_per_word", 100, INT64_MAX, where));
  return wp;
}

std::unique_ptr<Model> BuildUnigram(const json& node, const std::string& where) {
  auto uni = std::make_unique<Unigram>();
  std::unordered_map<std::string, int64_t> vocab;
  const json& entries = Field(node, "vocab", where);
  if (!entries.is_array()) Malformed(where, "Unigram vocab must be a list of [piece, score]");
  for (size_t i = 0; i < entries.size(); ++i) {
    const json& e = entries[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
      Malformed(where, fmt::format("Unigram vocab entry {} must be [piece, score], got {}", i, e.dump()));
    }
    vocab.emplace(e[0].get<std::string>(), static_cast<int64_t>(i));
    uni->scores.push_back(e[1].get<double>());
    uni->max_piece_chars = std::max(uni->max_piece_chars, Utf8Characters(e[0].get<std::string>()).size());
  }
  uni->SetVocab(std::move(vocab));
  uni->min_score = uni->scores.empty() ? 0.0 : *std::min_element(uni->scores.begin(), uni->scores.end());
  uni->byte_fallback = node.value("byte_fallback", false);
  if (node.contains("unk_id") && !node["unk_id"].is_null()) {
    uni->unk = TokenId(node["unk_id"], "unk_id", where);
    if (*uni->unk >= static_cast<int64_t>(entries.size()))  // as tokenizers refuses it: "unk_id is out of vocab"
      Malformed(where, fmt::format("unk_id {} is outside the {} vocab entries", *uni->unk, entries.size()));
  }
  return uni;
}

const Registry<std::unique_ptr<Model>>& Models() {
  static const Registry<std::unique_ptr<Model>> registry = {
      {"BPE", &BuildBpe},
      {"Unigram", &BuildUnigram},
      {"WordPiece", &BuildWordPiece},
  };
  return registry;
}

}  // namespace

std::unique_ptr<Model> ParseModel(const json& node, const std::string& where) {
  std::string type = node.value("type", std::string());
  if (type.empty()) {
    // Older files leave the type out; the fields tell.
    type = node.contains("merges")                     ? "BPE"
           : node.contains("max_input_chars_per_word") ? "WordPiece"
           : node.contains("unk_id")                   ? "Unigram"
                                                       : "";
  }
  return BuildStage(Models(), "model", type, node, where);
}

}  // namespace shardtune::hf
