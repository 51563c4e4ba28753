#include "worker/data/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "common/atomic_file.h"
#include "common/error.h"
#include "worker/data/tokenizer/regex.h"
#include "worker/data/tokenizer/unicode.h"
#include "worker/data/tokenizer/viterbi.h"

namespace shardtune {

namespace {

using json = nlohmann::json;
using Pieces = std::vector<std::string>;

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581

[[noreturn]] void Malformed(const std::string& where, const std::string& what) {
  Fail(ErrorCode::kInvalidArgument, "{}: {}", where, what);
}

const json& Field(const json& node, const char* key, const std::string& where) {
  const auto it = node.find(key);
  if (it == node.end()) Malformed(where, fmt::format("missing '{}'", key));
  return *it;
}

std::string StringField(const json& node, const char* key, const std::string& where) {
  const json& value = Field(node, key, where);
  if (!value.is_string()) Malformed(where, fmt::format("'{}' must be a string, got {}", key, value.dump()));
  return value.get<std::string>();
}

void ReplaceAll(std::string& text, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

// A string or regex pattern, as Replace and Split take them.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;

  static Pattern Parse(const json& node, const std::string& where) {
    Pattern p;
    if (node.contains("String")) {
      p.literal = StringField(node, "String", where);
    } else if (node.contains("Regex")) {
      try {
        p.regex = std::make_shared<Regex>(StringField(node, "Regex", where));
      } catch (const Error& e) {
        Malformed(where, e.what());
      }
    } else {
      Malformed(where, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
    return p;
  }
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const {
    if (regex) return regex->FindAll(text);
    std::vector<std::pair<size_t, size_t>> matches;
    if (literal.empty()) return matches;
    for (size_t at = text.find(literal); at != std::string_view::npos; at = text.find(literal, at + literal.size())) {
      matches.emplace_back(at, at + literal.size());
    }
    return matches;
  }
};

// ---- normalizers ----

using Normalizer = std::function<std::string(std::string)>;

Normalizer ParseNormalizer(const json& node, const std::string& where) {
  if (node.is_null()) return nullptr;
  const std::string type = StringField(node, "type", where);
  if (type == "Sequence") {
    std::vector<Normalizer> parts;
    for (const json& part : Field(node, "normalizers", where)) {
      if (auto n = ParseNormalizer(part, where)) parts.push_back(n);
    }
    return [parts](std::string text) {
      for (const auto& n : parts) text = n(std::move(text));
      return text;
    };
  }
  if (type == "Prepend") {
    const std::string prepend = StringField(node, "prepend", where);
    return [prepend](std::string text) { return text.empty() ? text : prepend + text; };
  }
  if (type == "Replace") {
    const Pattern pattern = Pattern::Parse(Field(node, "pattern", where), where + ": Replace");
    const std::string content = StringField(node, "content", where);
    return [pattern, content](std::string text) {
      std::string out;
      size_t last = 0;
      for (const auto& [b, e] : pattern.FindAll(text)) {
        out.append(text, last, b - last);
        out += content;
        last = e;
      }
      out.append(text, last, std::string::npos);
      return out;
    };
  }
  if (type == "NFC") return [](std::string t) { return NormalizeUnicode(t, NormalizationForm::kNfc); };
  if (type == "NFD") return [](std::string t) { return NormalizeUnicode(t, NormalizationForm::kNfd); };
  if (type == "NFKC") return [](std::string t) { return NormalizeUnicode(t, NormalizationForm::kNfkc); };
  if (type == "NFKD") return [](std::string t) { return NormalizeUnicode(t, NormalizationForm::kNfkd); };
  if (type == "Lowercase") return [](std::string t) { return LowercaseUnicode(t); };
  if (type == "StripAccents") return [](std::string t) { return StripCombiningMarks(t); };
  if (type == "Strip") {
    const bool left = node.value("strip_left", true), right = node.value("strip_right", true);
    return [left, right](std::string t) {
      const char* ws = " \t\n\r\f\v";
      if (right) t.erase(t.find_last_not_of(ws) + 1);
      if (left) t.erase(0, std::min(t.size(), t.find_first_not_of(ws)));
      return t;
    };
  }
  if (type == "BertNormalizer") {
    const bool clean = node.value("clean_text", true);
    const bool lowercase = node.value("lowercase", true);
    const json& strip = node.contains("strip_accents") ? node["strip_accents"] : json();
    const bool strip_accents = strip.is_null() ? lowercase : strip.get<bool>();
    const bool chinese = node.value("handle_chinese_chars", true);
    return [clean, lowercase, strip_accents, chinese](std::string text) {
      std::string out;
      for (const std::string& c : Utf8Characters(text)) {
        if (clean && (c == std::string(1, '\0') || c == "\xEF\xBF\xBD")) continue;
        if (clean && (c == "\t" || c == "\n" || c == "\r")) {
          out += ' ';
          continue;
        }
        // CJK ideographs get spaces around them so they become words of their own.
        const bool cjk = chinese && c.size() >= 3 &&
                         ((c >= "\xE4\xB8\x80" && c <= "\xE9\xBF\xBF") || (c >= "\xE3\x90\x80" && c <= "\xE4\xB6\xBF"));
        out += cjk ? " " + c + " " : c;
      }
      if (strip_accents) out = StripCombiningMarks(NormalizeUnicode(out, NormalizationForm::kNfd));
      if (lowercase) out = LowercaseUnicode(out);
      return out;
    };
  }
  if (type == "Precompiled") {
    // SentencePiece's compiled normalization rules; NFKC is what they encode for the common
    // models (T5 and friends). The exact charsmap is not interpreted.
    return [](std::string t) { return NormalizeUnicode(t, NormalizationForm::kNfkc); };
  }
  Malformed(where, fmt::format("normalizer type '{}' is not supported", type));
}

// ---- pre-tokenizers ----

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior ParseBehavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  Malformed(
      where,
      fmt::format("split behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                  name));
}

// Splits `text` around `matches` (sorted, disjoint) as `behavior` says; empty pieces vanish.
Pieces SplitAround(const std::string& text, const std::vector<std::pair<size_t, size_t>>& matches,
                   SplitBehavior behavior, bool invert) {
  struct Span {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  }
  if (last < text.size()) spans.push_back({last, text.size(), invert});

  Pieces pieces;
  bool previous_match = false;
  bool pending_prefix = false;  // MergedWithNext: the last piece waits for the next span
  for (const Span& s : spans) {
    const std::string part = text.substr(s.begin, s.end - s.begin);
    switch (behavior) {
      case SplitBehavior::kRemoved:
        if (!s.is_match) pieces.push_back(part);
        break;
      case SplitBehavior::kIsolated:
        pieces.push_back(part);
        break;
      case SplitBehavior::kMergedWithPrevious:
        if (s.is_match && !pieces.empty() && !previous_match)
          pieces.back() += part;
        else
          pieces.push_back(part);
        break;
      case SplitBehavior::kMergedWithNext:
        // A delimiter joins the piece after it, unless that is a delimiter too: "a--b" -> a, -, -b.
        if (pending_prefix && !s.is_match) {
          pieces.back() += part;
          pending_prefix = false;
        } else {
          pieces.push_back(part);
          pending_prefix = s.is_match;
        }
        break;
      case SplitBehavior::kContiguous:
        if (s.is_match && previous_match && !pieces.empty())
          pieces.back() += part;
        else
          pieces.push_back(part);
        break;
    }
    previous_match = s.is_match;
  }
  pieces.erase(std::remove(pieces.begin(), pieces.end(), std::string()), pieces.end());
  return pieces;
}

// `at_start`: the pieces begin at the start of the whole text (not after an added token), which
// Metaspace's prepend_scheme "first" needs to know.
using PreTokenizer = std::function<Pieces(Pieces, bool at_start)>;

PreTokenizer SplitEach(std::shared_ptr<Regex> regex, SplitBehavior behavior, bool invert) {
  return [regex, behavior, invert](Pieces in, bool at_start) {
    Pieces out;
    for (const std::string& piece : in) {
      for (std::string& p : SplitAround(piece, regex->FindAll(piece), behavior, invert)) out.push_back(std::move(p));
    }
    return out;
  };
}

std::string ToByteLevel(const std::string& piece) {
  std::string out;
  for (unsigned char b : piece) out += ByteToUnicode(b);
  return out;
}

PreTokenizer ParsePreTokenizer(const json& node, const std::string& where) {
  if (node.is_null()) return nullptr;
  const std::string type = StringField(node, "type", where);
  if (type == "Sequence") {
    std::vector<PreTokenizer> parts;
    for (const json& part : Field(node, "pretokenizers", where)) {
      if (auto p = ParsePreTokenizer(part, where)) parts.push_back(p);
    }
    return [parts](Pieces pieces, bool at_start) {
      for (const auto& p : parts) pieces = p(std::move(pieces), at_start);
      return pieces;
    };
  }
  if (type == "ByteLevel") {
    const bool prefix = node.value("add_prefix_space", true);
    const bool use_regex = node.value("use_regex", true);
    auto regex = std::make_shared<Regex>(kGpt2Pattern);
    return [prefix, use_regex, regex](Pieces in, bool at_start) {
      Pieces out;
      for (std::string piece : in) {
        if (prefix && (piece.empty() || piece[0] != ' ')) piece = " " + piece;
        Pieces parts =
            use_regex ? SplitAround(piece, regex->FindAll(piece), SplitBehavior::kIsolated, false) : Pieces{piece};
        for (const std::string& part : parts) out.push_back(ToByteLevel(part));
      }
      return out;
    };
  }
  if (type == "Split") {
    const Pattern pattern = Pattern::Parse(Field(node, "pattern", where), where + ": Split");
    const SplitBehavior behavior = ParseBehavior(StringField(node, "behavior", where), where);
    const bool invert = node.value("invert", false);
    return [pattern, behavior, invert](Pieces in, bool at_start) {
      Pieces out;
      for (const std::string& piece : in) {
        for (std::string& s : SplitAround(piece, pattern.FindAll(piece), behavior, invert)) out.push_back(std::move(s));
      }
      return out;
    };
  }
  if (type == "Metaspace") {
    const std::string replacement = node.value("replacement", std::string(kMetaspace));
    std::string scheme = node.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = node.value("add_prefix_space", true) ? "always" : "never";
    const bool split = node.value("split", true);
    return [replacement, scheme, split](Pieces in, bool at_start) {
      Pieces out;
      for (size_t i = 0; i < in.size(); ++i) {
        std::string piece = in[i];
        ReplaceAll(piece, " ", replacement);
        const bool prepend = scheme == "always" || (scheme == "first" && i == 0 && at_start);
        if (prepend && piece.rfind(replacement, 0) != 0) piece = replacement + piece;
        if (!split) {
          out.push_back(piece);
          continue;
        }
        Pattern p;
        p.literal = replacement;
        for (std::string& s : SplitAround(piece, p.FindAll(piece), SplitBehavior::kMergedWithNext, false))
          out.push_back(std::move(s));
      }
      return out;
    };
  }
  if (type == "Whitespace") return SplitEach(std::make_shared<Regex>(R"(\w+|[^\w\s]+)"), SplitBehavior::kRemoved, true);
  if (type == "WhitespaceSplit") return SplitEach(std::make_shared<Regex>(R"(\S+)"), SplitBehavior::kRemoved, true);
  if (type == "Digits") {
    const bool individual = node.value("individual_digits", false);
    return SplitEach(std::make_shared<Regex>(individual ? R"(\p{N})" : R"(\p{N}+)"), SplitBehavior::kIsolated, false);
  }
  if (type == "Punctuation") {
    const SplitBehavior behavior = ParseBehavior(node.value("behavior", std::string("Isolated")), where);
    return SplitEach(std::make_shared<Regex>(R"([\p{P}!-/:-@\[-`{-~])"), behavior, false);
  }
  if (type == "BertPreTokenizer") {
    auto words = SplitEach(std::make_shared<Regex>(R"(\S+)"), SplitBehavior::kRemoved, true);
    auto punctuation = SplitEach(std::make_shared<Regex>(R"([\p{P}!-/:-@\[-`{-~])"), SplitBehavior::kIsolated, false);
    return [words, punctuation](Pieces in, bool at_start) {
      return punctuation(words(std::move(in), at_start), at_start);
    };
  }
  Malformed(where, fmt::format("pre-tokenizer type '{}' is not supported", type));
}

// ---- models ----

class Model {
 public:
  virtual ~Model() = default;
  virtual void Encode(const std::string& piece, std::vector<int64_t>& out) const = 0;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> id_to_token;

  void SetVocab(std::unordered_map<std::string, int64_t> v) {
    vocab = std::move(v);
    int64_t max_id = -1;
    for (const auto& [token, id] : vocab) max_id = std::max(max_id, id);
    id_to_token.assign(static_cast<size_t>(max_id + 1), "");
    for (const auto& [token, id] : vocab) id_to_token[static_cast<size_t>(id)] = token;
  }
  std::optional<int64_t> Find(const std::string& token) const {
    const auto it = vocab.find(token);
    return it == vocab.end() ? std::nullopt : std::optional<int64_t>(it->second);
  }
};

std::unordered_map<std::string, int64_t> ParseVocabObject(const json& vocab, const std::string& where) {
  if (!vocab.is_object()) Malformed(where, "model.vocab must be an object of token -> id");
  std::unordered_map<std::string, int64_t> out;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      Malformed(where, fmt::format("vocab id of '{}' must be a non-negative integer", token));
    out[token] = id.get<int64_t>();
  }
  return out;
}

class Bpe : public Model {
 public:
  std::optional<int64_t> unk;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::string prefix;  // continuing_subword_prefix
  std::string suffix;  // end_of_word_suffix
  struct Merge {
    int32_t rank;
    int64_t id;
  };
  std::unordered_map<uint64_t, Merge> merges;

  static uint64_t Key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

  void AddMerge(const std::string& a, const std::string& b, int32_t rank, const std::string& where) {
    const auto ia = Find(a), ib = Find(b);
    const std::string joined = a + (prefix.empty() || b.rfind(prefix, 0) != 0 ? b : b.substr(prefix.size()));
    const auto ij = Find(joined);
    if (!ia || !ib || !ij)
      Malformed(where, fmt::format("merge {} ('{}' '{}') uses a token that is not in the vocabulary", rank, a, b));
    merges.emplace(Key(*ia, *ib), Merge{rank, *ij});  // the first (lowest-rank) entry wins
  }

  void Encode(const std::string& piece, std::vector<int64_t>& out) const override {
    if (ignore_merges) {
      if (const auto id = Find(piece)) {
        out.push_back(*id);
        return;
      }
    }
    // The word's symbols, each a token id, as a doubly linked list.
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
        std::vector<int64_t> bytes;
        for (unsigned char b : characters[i]) {
          if (const auto id = Find(fmt::format("<0x{:02X}>", static_cast<unsigned>(b)))) bytes.push_back(*id);
        }
        if (bytes.size() == characters[i].size()) {
          ids.insert(ids.end(), bytes.begin(), bytes.end());
          last_unk = false;
          continue;
        }
      }
      // With neither byte fallback nor an unk token, tokenizers drops the character; so do we.
      if (!unk) continue;
      if (!(fuse_unk && last_unk)) ids.push_back(*unk);
      last_unk = true;
    }
    MergeAll(ids);
    out.insert(out.end(), ids.begin(), ids.end());
  }

 private:
  // Applies merges lowest rank first (leftmost first among equal ranks), as tokenizers' BPE does.
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
      const auto it = merges.find(Key(ids[left], ids[next[left]]));
      if (it != merges.end()) queue.push({it->second.rank, left, ids[left], ids[next[left]]});
    };
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      const int64_t right = next[c.left];
      // Stale entries: a side was merged away or changed since this pair was queued.
      if (!alive[c.left] || right < 0 || ids[c.left] != c.left_id || ids[right] != c.right_id) continue;
      ids[c.left] = merges.at(Key(c.left_id, c.right_id)).id;
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
        std::vector<int64_t> bytes;
        for (unsigned char b : character) {
          if (const auto byte = Find(fmt::format("<0x{:02X}>", static_cast<unsigned>(b)))) bytes.push_back(*byte);
        }
        if (bytes.size() == character.size()) {
          out.insert(out.end(), bytes.begin(), bytes.end());
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

std::unique_ptr<Model> ParseModel(const json& node, const std::string& where) {
  std::string type = node.value("type", std::string());
  if (type.empty()) {
    // Older files leave the type out; the fields tell.
    type = node.contains("merges")                     ? "BPE"
           : node.contains("max_input_chars_per_word") ? "WordPiece"
           : node.contains("unk_id")                   ? "Unigram"
                                                       : "";
  }
  if (type == "BPE") {
    auto bpe = std::make_unique<Bpe>();
    bpe->SetVocab(ParseVocabObject(Field(node, "vocab", where), where));
    if (node.contains("unk_token") && node["unk_token"].is_string()) {
      bpe->unk = bpe->Find(node["unk_token"].get<std::string>());
      if (!bpe->unk)
        Malformed(where, fmt::format("unk_token '{}' is not in the vocabulary", node["unk_token"].get<std::string>()));
    }
    bpe->byte_fallback = node.value("byte_fallback", false);
    bpe->fuse_unk = node.value("fuse_unk", false);
    bpe->ignore_merges = node.value("ignore_merges", false);
    if (node.contains("continuing_subword_prefix") && node["continuing_subword_prefix"].is_string()) {
      bpe->prefix = node["continuing_subword_prefix"].get<std::string>();
    }
    if (node.contains("end_of_word_suffix") && node["end_of_word_suffix"].is_string()) {
      bpe->suffix = node["end_of_word_suffix"].get<std::string>();
    }
    const json& merges = Field(node, "merges", where);
    if (!merges.is_array()) Malformed(where, "model.merges must be a list");
    int32_t rank = 0;
    for (const json& merge : merges) {
      if (merge.is_string()) {
        // "a b"; tokens may themselves hold spaces (Llama's "  "), so take the first split whose
        // parts and their concatenation are all tokens.
        const std::string text = merge.get<std::string>();
        size_t space = text.find(' ');
        while (space != std::string::npos &&
               (space == 0 || space + 1 == text.size() || !bpe->Find(text.substr(0, space)) ||
                !bpe->Find(text.substr(space + 1)))) {
          space = text.find(' ', space + 1);
        }
        if (space == std::string::npos) {
          Malformed(where, fmt::format("merge {} '{}' is not two vocabulary tokens separated by a space", rank, text));
        }
        bpe->AddMerge(text.substr(0, space), text.substr(space + 1), rank, where);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        bpe->AddMerge(merge[0].get<std::string>(), merge[1].get<std::string>(), rank, where);
      } else {
        Malformed(where, fmt::format("merge {} must be \"a b\" or [\"a\", \"b\"], got {}", rank, merge.dump()));
      }
      ++rank;
    }
    return bpe;
  }
  if (type == "WordPiece") {
    auto wp = std::make_unique<WordPiece>();
    wp->SetVocab(ParseVocabObject(Field(node, "vocab", where), where));
    const std::string unk = node.value("unk_token", std::string("[UNK]"));
    const auto id = wp->Find(unk);
    if (!id) Malformed(where, fmt::format("unk_token '{}' is not in the vocabulary", unk));
    wp->unk = *id;
    wp->prefix = node.value("continuing_subword_prefix", std::string("##"));
    wp->max_chars = node.value("max_input_chars_per_word", 100);
    return wp;
  }
  if (type == "Unigram") {
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
    if (node.contains("unk_id") && node["unk_id"].is_number_integer()) uni->unk = node["unk_id"].get<int64_t>();
    return uni;
  }
  Malformed(where, fmt::format("model type '{}' is not supported (supported: BPE, WordPiece, Unigram)", type));
}

// ---- post-processors (single sequences) ----

using PostProcessor = std::function<std::vector<int64_t>(std::vector<int64_t>)>;

int64_t IdOfPair(const json& pair, const std::string& where) {
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) Malformed(where, "expected [token, id]");
  return pair[1].get<int64_t>();
}

PostProcessor ParsePostProcessor(const json& node, const std::string& where) {
  if (node.is_null()) return nullptr;
  const std::string type = StringField(node, "type", where);
  if (type == "TemplateProcessing") {
    std::map<std::string, std::vector<int64_t>> specials;
    if (node.contains("special_tokens")) {
      for (const auto& [name, special] : node["special_tokens"].items())
        specials[name] = special.at("ids").get<std::vector<int64_t>>();
    }
    std::vector<std::vector<int64_t>> template_ids;  // empty vector = the sequence itself
    for (const json& item : Field(node, "single", where)) {
      if (item.contains("SpecialToken")) {
        const std::string id = StringField(item["SpecialToken"], "id", where);
        if (!specials.count(id))
          Malformed(where, fmt::format("TemplateProcessing uses special token '{}' without listing it", id));
        template_ids.push_back(specials[id]);
      } else {
        template_ids.push_back({});
      }
    }
    return [template_ids](std::vector<int64_t> ids) {
      std::vector<int64_t> out;
      for (const auto& item : template_ids) {
        if (item.empty())
          out.insert(out.end(), ids.begin(), ids.end());
        else
          out.insert(out.end(), item.begin(), item.end());
      }
      return out;
    };
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const int64_t cls = IdOfPair(Field(node, "cls", where), where), sep = IdOfPair(Field(node, "sep", where), where);
    return [cls, sep](std::vector<int64_t> ids) {
      ids.insert(ids.begin(), cls);
      ids.push_back(sep);
      return ids;
    };
  }
  if (type == "ByteLevel") return nullptr;  // only adjusts offsets
  if (type == "Sequence") {
    std::vector<PostProcessor> parts;
    for (const json& part : Field(node, "processors", where)) {
      if (auto p = ParsePostProcessor(part, where)) parts.push_back(p);
    }
    return [parts](std::vector<int64_t> ids) {
      for (const auto& p : parts) ids = p(std::move(ids));
      return ids;
    };
  }
  Malformed(where, fmt::format("post-processor type '{}' is not supported", type));
}

// ---- decoders ----

using Decoder = std::function<std::vector<std::string>(std::vector<std::string>)>;

Decoder ParseDecoder(const json& node, const std::string& where) {
  if (node.is_null()) return nullptr;
  const std::string type = StringField(node, "type", where);
  if (type == "Sequence") {
    std::vector<Decoder> parts;
    for (const json& part : Field(node, "decoders", where)) {
      if (auto d = ParseDecoder(part, where)) parts.push_back(d);
    }
    return [parts](std::vector<std::string> tokens) {
      for (const auto& d : parts) tokens = d(std::move(tokens));
      return tokens;
    };
  }
  if (type == "ByteLevel") {
    return [](std::vector<std::string> tokens) {
      std::string bytes;
      for (const std::string& token : tokens) {
        for (const std::string& c : Utf8Characters(token)) {
          const int b = UnicodeToByte(c);
          if (b >= 0)
            bytes.push_back(static_cast<char>(b));
          else
            bytes += c;
        }
      }
      return std::vector<std::string>{Utf8Lossy(bytes)};
    };
  }
  if (type == "Replace") {
    const json& pattern = Field(node, "pattern", where);
    if (!pattern.contains("String")) Malformed(where, "Replace decoder supports string patterns only");
    const std::string from = StringField(pattern, "String", where), to = StringField(node, "content", where);
    return [from, to](std::vector<std::string> tokens) {
      for (std::string& t : tokens) ReplaceAll(t, from, to);
      return tokens;
    };
  }
  if (type == "ByteFallback") {
    return [](std::vector<std::string> tokens) {
      std::vector<std::string> out;
      std::string bytes;
      auto flush = [&] {
        if (bytes.empty()) return;
        if (IsValidUtf8(bytes)) {
          out.push_back(bytes);
        } else {
          for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
        }
        bytes.clear();
      };
      for (const std::string& t : tokens) {
        unsigned value = 0;
        if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2x", &value) == 1) {
          bytes.push_back(static_cast<char>(value));
        } else {
          flush();
          out.push_back(t);
        }
      }
      flush();
      return out;
    };
  }
  if (type == "Fuse") {
    return [](std::vector<std::string> tokens) {
      std::string all;
      for (const auto& t : tokens) all += t;
      return std::vector<std::string>{all};
    };
  }
  if (type == "Strip") {
    const std::string content = StringField(node, "content", where);
    const size_t start = node.value("start", 0), stop = node.value("stop", 0);
    return [content, start, stop](std::vector<std::string> tokens) {
      for (std::string& t : tokens) {
        for (size_t k = 0; k < start && t.rfind(content, 0) == 0; ++k) t.erase(0, content.size());
        for (size_t k = 0; k < stop && t.size() >= content.size() &&
                           t.compare(t.size() - content.size(), content.size(), content) == 0;
             ++k) {
          t.erase(t.size() - content.size());
        }
      }
      return tokens;
    };
  }
  if (type == "Metaspace") {
    const std::string replacement = node.value("replacement", std::string(kMetaspace));
    std::string scheme = node.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = node.value("add_prefix_space", true) ? "always" : "never";
    return [replacement, scheme](std::vector<std::string> tokens) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        ReplaceAll(tokens[i], replacement, " ");
        if (i == 0 && scheme != "never" && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
      }
      return tokens;
    };
  }
  if (type == "WordPiece") {
    const std::string prefix = node.value("prefix", std::string("##"));
    const bool cleanup = node.value("cleanup", true);
    return [prefix, cleanup](std::vector<std::string> tokens) {
      std::string text;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i > 0 && tokens[i].rfind(prefix, 0) == 0)
          text += tokens[i].substr(prefix.size());
        else
          text += (i > 0 ? " " : "") + tokens[i];
      }
      if (cleanup) {
        for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{{" .", "."},
                                                                                       {" ?", "?"},
                                                                                       {" !", "!"},
                                                                                       {" ,", ","},
                                                                                       {" ' ", "'"},
                                                                                       {" n't", "n't"},
                                                                                       {" 'm", "'m"},
                                                                                       {" do not", " don't"},
                                                                                       {" 's", "'s"},
                                                                                       {" 've", "'ve"},
                                                                                       {" 're", "'re"}}) {
          ReplaceAll(text, from, to);
        }
      }
      return std::vector<std::string>{text};
    };
  }
  if (type == "BPEDecoder") {
    const std::string suffix = node.value("suffix", std::string("</w>"));
    return [suffix](std::vector<std::string> tokens) {
      for (size_t i = 0; i < tokens.size(); ++i) ReplaceAll(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
      return tokens;
    };
  }
  Malformed(where, fmt::format("decoder type '{}' is not supported", type));
}

// ---- the tokenizer ----

struct AddedToken {
  int64_t id;
  std::string content;
  bool special, normalized, lstrip, rstrip, single_word;
};

class HfTokenizer : public Tokenizer {
 public:
  std::unique_ptr<Model> model;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  PostProcessor post_processor;
  Decoder decoder;
  std::vector<AddedToken> added;  // longest first, for leftmost-longest matching
  std::unordered_map<int64_t, const AddedToken*> added_by_id;
  std::array<std::vector<const AddedToken*>, 256> by_first_byte;  // longest first, as `added`

  void Finish() {
    std::stable_sort(added.begin(), added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (const auto& token : added) {
      added_by_id[token.id] = &token;
      if (!token.content.empty()) by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(&token);
    }
  }

  std::vector<int64_t> Encode(std::string_view raw, bool add_special_tokens) const override {
    const std::string text = IsValidUtf8(raw) ? std::string(raw) : Utf8Lossy(raw);
    std::vector<int64_t> ids;
    bool at_start = true;  // nothing (no added token) precedes the current piece
    // Added tokens matched in the raw text first, then the normalized ones in each normalized gap.
    for (const Segment& s : SplitAdded(text, /*normalized=*/false)) {
      if (s.token) {
        ids.push_back(s.token->id);
        at_start = false;
        continue;
      }
      const std::string normalized = normalizer ? normalizer(s.text) : s.text;
      for (const Segment& t : SplitAdded(normalized, /*normalized=*/true)) {
        if (t.token) {
          ids.push_back(t.token->id);
          at_start = false;
          continue;
        }
        Pieces pieces = pre_tokenizer ? pre_tokenizer(Pieces{t.text}, at_start) : Pieces{t.text};
        at_start = false;
        for (const std::string& piece : pieces) model->Encode(piece, ids);
      }
    }
    if (add_special_tokens && post_processor) ids = post_processor(std::move(ids));
    return ids;
  }

  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    for (int64_t id : ids) {
      if (skip_special_tokens && IsSpecial(id)) continue;
      tokens.push_back(IdToToken(id));
    }
    if (!decoder) {
      std::string joined;
      for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
      return joined;
    }
    std::string out;
    for (const std::string& piece : decoder(std::move(tokens))) out += piece;
    return out;
  }

  int64_t vocab_size() const override {
    int64_t n = static_cast<int64_t>(model->id_to_token.size());
    for (const auto& token : added) n = std::max(n, token.id + 1);
    return n;
  }
  std::optional<int64_t> TokenToId(const std::string& token) const override {
    for (const auto& a : added)
      if (a.content == token) return a.id;
    return model->Find(token);
  }
  std::string IdToToken(int64_t id) const override {
    if (const auto it = added_by_id.find(id); it != added_by_id.end()) return it->second->content;
    if (id < 0 || id >= static_cast<int64_t>(model->id_to_token.size())) {
      Fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", id, vocab_size());
    }
    return model->id_to_token[static_cast<size_t>(id)];
  }
  bool IsSpecial(int64_t id) const override {
    const auto it = added_by_id.find(id);
    return it != added_by_id.end() && it->second->special;
  }

 private:
  struct Segment {
    std::string text;
    const AddedToken* token = nullptr;
  };

  static bool IsWordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (c & 0x80); }

  std::vector<Segment> SplitAdded(const std::string& text, bool normalized) const {
    std::vector<Segment> segments;
    size_t last = 0, i = 0;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      // Only tokens that start with this byte, longest first.
      for (const AddedToken* token : by_first_byte[static_cast<unsigned char>(text[i])]) {
        if (token->normalized != normalized) continue;
        if (text.compare(i, token->content.size(), token->content) != 0) continue;
        const size_t end = i + token->content.size();
        if (token->single_word && ((i > 0 && IsWordChar(text[i - 1])) || (end < text.size() && IsWordChar(text[end]))))
          continue;
        hit = token;
        break;
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t begin = i, end = i + hit->content.size();
      if (hit->lstrip)
        while (begin > last && std::isspace(static_cast<unsigned char>(text[begin - 1]))) --begin;
      if (hit->rstrip)
        while (end < text.size() && std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      if (begin > last) segments.push_back({text.substr(last, begin - last), nullptr});
      segments.push_back({"", hit});
      last = i = end;
    }
    if (last < text.size()) segments.push_back({text.substr(last), nullptr});
    return segments;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> LoadHfTokenizerJson(const std::string& json_text, const std::string& where) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    Malformed(where, fmt::format("not valid JSON: {}", e.what()));
  }
  if (!root.is_object()) Malformed(where, "expected a JSON object");
  auto tokenizer = std::make_unique<HfTokenizer>();
  tokenizer->model = ParseModel(Field(root, "model", where), where + ": model");
  tokenizer->normalizer = ParseNormalizer(root.value("normalizer", json()), where + ": normalizer");
  tokenizer->pre_tokenizer = ParsePreTokenizer(root.value("pre_tokenizer", json()), where + ": pre_tokenizer");
  tokenizer->post_processor = ParsePostProcessor(root.value("post_processor", json()), where + ": post_processor");
  tokenizer->decoder = ParseDecoder(root.value("decoder", json()), where + ": decoder");
  if (root.contains("added_tokens")) {
    for (const json& a : root["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content"))
        Malformed(where, "added_tokens entries need 'id' and 'content'");
      tokenizer->added.push_back(AddedToken{a["id"].get<int64_t>(), a["content"].get<std::string>(),
                                            a.value("special", false),
                                            a.value("normalized", !a.value("special", false)), a.value("lstrip", false),
                                            a.value("rstrip", false), a.value("single_word", false)});
    }
  }
  tokenizer->Finish();
  return tokenizer;
}

std::unique_ptr<Tokenizer> LoadGpt2VocabMerges(const std::filesystem::path& vocab_json,
                                               const std::filesystem::path& merges_txt) {
  json vocab;
  try {
    vocab = json::parse(ReadFile(vocab_json));
  } catch (const json::parse_error& e) {
    Malformed(vocab_json.string(), fmt::format("not valid JSON: {}", e.what()));
  }
  json merges = json::array();
  std::istringstream lines(ReadFile(merges_txt));
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    merges.push_back(line);
  }
  json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
                    {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                    {"decoder", {{"type", "ByteLevel"}}},
                    {"added_tokens", json::array()}};
  // GPT-2's one special token, as GPT2Tokenizer declares it.
  if (vocab.is_object() && vocab.contains("<|endoftext|>")) {
    tokenizer["added_tokens"].push_back(
        {{"id", vocab["<|endoftext|>"]}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}});
  }
  return LoadHfTokenizerJson(tokenizer.dump(), vocab_json.string() + " + " + merges_txt.filename().string());
}

std::unique_ptr<Tokenizer> LoadWordPieceVocab(const std::filesystem::path& vocab_txt) {
  json vocab = json::object();
  std::istringstream lines(ReadFile(vocab_txt));
  std::string line;
  for (int64_t id = 0; std::getline(lines, line); ++id) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab[line] = id;
  }
  json added = json::array();
  for (const char* special : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    if (vocab.contains(special))
      added.push_back({{"id", vocab[special]}, {"content", special}, {"special", true}, {"normalized", false}});
  }
  const bool lowercase = vocab_txt.filename().string().find("uncased") != std::string::npos;
  const json cls = {"[CLS]", vocab.value("[CLS]", 101)}, sep = {"[SEP]", vocab.value("[SEP]", 102)};
  const json tokenizer = {{"model",
                           {{"type", "WordPiece"},
                            {"vocab", vocab},
                            {"unk_token", "[UNK]"},
                            {"continuing_subword_prefix", "##"},
                            {"max_input_chars_per_word", 100}}},
                          {"normalizer",
                           {{"type", "BertNormalizer"},
                            {"clean_text", true},
                            {"handle_chinese_chars", true},
                            {"lowercase", lowercase},
                            {"strip_accents", nullptr}}},
                          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                          {"post_processor", {{"type", "BertProcessing"}, {"cls", cls}, {"sep", sep}}},
                          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
                          {"added_tokens", added}};
  return LoadHfTokenizerJson(tokenizer.dump(), vocab_txt.string());
}

}  // namespace shardtune
