// tokenizer.json pre-tokenizers: one builder per "type", dispatched through PreTokenizers().
#include <algorithm>

#include "worker/data/tokenizer/hf_stages.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::hf {

namespace {

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kPunctuationPattern = R"([\p{P}!-/:-@\[-`{-~])";

// What happens to the matched delimiters when a piece is split around them.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior ParseBehavior(const std::string& name, const std::string& where) {
  static const std::map<std::string, SplitBehavior, std::less<>> kBehaviors = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  };
  const auto it = kBehaviors.find(name);
  if (it == kBehaviors.end()) {
    Malformed(where,
              fmt::format(
                  "split behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                  name));
  }
  return it->second;
}

struct Span {
  size_t begin, end;
  bool is_match;
};

// `text` cut at `matches` (sorted, disjoint) into alternating gap and match spans; `invert` swaps
// which of the two counts as the delimiter.
std::vector<Span> SpansAround(size_t size, const std::vector<std::pair<size_t, size_t>>& matches, bool invert) {
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  }
  if (last < size) spans.push_back({last, size, invert});
  return spans;
}

// Splits `text` around `matches` (sorted, disjoint) as `behavior` says; empty pieces vanish.
Pieces SplitAround(const std::string& text, const std::vector<std::pair<size_t, size_t>>& matches,
                   SplitBehavior behavior, bool invert) {
  Pieces pieces;
  bool previous_match = false;
  bool pending_prefix = false;  // MergedWithNext: the last piece waits for the next span
  for (const Span& s : SpansAround(text.size(), matches, invert)) {
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

// Splits every piece around the matches of `pattern`.
PreTokenizer SplitEach(Pattern pattern, SplitBehavior behavior, bool invert) {
  return [pattern = std::move(pattern), behavior, invert](Pieces in, bool) {
    Pieces out;
    for (const std::string& piece : in) {
      for (std::string& s : SplitAround(piece, pattern.FindAll(piece), behavior, invert)) out.push_back(std::move(s));
    }
    return out;
  };
}

PreTokenizer SplitEach(const char* regex, SplitBehavior behavior, bool invert) {
  Pattern pattern;
  pattern.regex = std::make_shared<Regex>(regex);
  return SplitEach(std::move(pattern), behavior, invert);
}

std::string ToByteLevel(const std::string& piece) {
  std::string out;
  for (unsigned char b : piece) out += ByteToUnicode(b);
  return out;
}

PreTokenizer BuildSequence(const json& node, const std::string& where) {
  std::vector<PreTokenizer> parts = ParseParts(node, "pretokenizers", where, &ParsePreTokenizer);
  return [parts = std::move(parts)](Pieces pieces, bool at_start) {
    for (const auto& p : parts) pieces = p(std::move(pieces), at_start);
    return pieces;
  };
}

PreTokenizer BuildByteLevel(const json& node, const std::string&) {
  const bool prefix = node.value("add_prefix_space", true);
  const bool use_regex = node.value("use_regex", true);
  auto regex = std::make_shared<Regex>(kGpt2Pattern);
  return [prefix, use_regex, regex](Pieces in, bool) {
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

PreTokenizer BuildSplit(const json& node, const std::string& where) {
  Pattern pattern = Pattern::Parse(Field(node, "pattern", where), where + ": Split");
  const SplitBehavior behavior = ParseBehavior(StringField(node, "behavior", where), where);
  return SplitEach(std::move(pattern), behavior, node.value("invert", false));
}

PreTokenizer BuildMetaspace(const json& node, const std::string& where) {
  const std::string replacement = MetaspaceReplacement(node, where);
  const std::string scheme = MetaspacePrependScheme(node);
  const bool split = node.value("split", true);
  Pattern delimiter;
  delimiter.literal = replacement;
  return [replacement, scheme, split, delimiter](Pieces in, bool at_start) {
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
      for (std::string& s : SplitAround(piece, delimiter.FindAll(piece), SplitBehavior::kMergedWithNext, false))
        out.push_back(std::move(s));
    }
    return out;
  };
}

PreTokenizer BuildWhitespace(const json&, const std::string&) {
  return SplitEach(R"(\w+|[^\w\s]+)", SplitBehavior::kRemoved, true);
}

PreTokenizer BuildWhitespaceSplit(const json&, const std::string&) {
  return SplitEach(R"(\S+)", SplitBehavior::kRemoved, true);
}

PreTokenizer BuildDigits(const json& node, const std::string&) {
  const bool individual = node.value("individual_digits", false);
  return SplitEach(individual ? R"(\p{N})" : R"(\p{N}+)", SplitBehavior::kIsolated, false);
}

PreTokenizer BuildPunctuation(const json& node, const std::string& where) {
  const SplitBehavior behavior = ParseBehavior(node.value("behavior", std::string("Isolated")), where);
  return SplitEach(kPunctuationPattern, behavior, false);
}

PreTokenizer BuildBert(const json&, const std::string&) {
  auto words = SplitEach(R"(\S+)", SplitBehavior::kRemoved, true);
  auto punctuation = SplitEach(kPunctuationPattern, SplitBehavior::kIsolated, false);
  return
      [words, punctuation](Pieces in, bool at_start) { return punctuation(words(std::move(in), at_start), at_start); };
}

}  // namespace

PreTokenizer ParsePreTokenizer(const json& node, const std::string& where) {
  static const Registry<PreTokenizer> registry = {
      {"BertPreTokenizer", &BuildBert}, {"ByteLevel", &BuildByteLevel},     {"Digits", &BuildDigits},
      {"Metaspace", &BuildMetaspace},   {"Punctuation", &BuildPunctuation}, {"Sequence", &BuildSequence},
      {"Split", &BuildSplit},           {"Whitespace", &BuildWhitespace},   {"WhitespaceSplit", &BuildWhitespaceSplit},
  };
  return ParseOptionalStage(registry, "pre-tokenizer", node, where);
}

}  // namespace shardtune::hf
