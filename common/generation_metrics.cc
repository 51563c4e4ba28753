#include "common/generation_metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "common/error.h"

namespace shardtune {

namespace {

using json = nlohmann::json;

bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }

std::string_view Trimmed(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r\n\f\v");
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t\r\n\f\v") - begin + 1);
}

std::string ReplaceAll(std::string s, std::string_view from, std::string_view to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// re.sub of a two-character pattern (first)(second) by "\1 \2"-like text: at each position, a
// match is replaced and scanning resumes after it, else the character is kept. Both classes
// hold ASCII characters or "anything but a digit", so working on UTF-8 bytes gives the same text.
template <typename First, typename Second>
std::string SubstitutePairs(const std::string& s, First first, Second second, std::string_view before,
                            std::string_view between, std::string_view after) {
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  for (size_t i = 0; i < s.size();) {
    const auto a = static_cast<unsigned char>(s[i]);
    if (i + 1 < s.size() && first(a) && second(static_cast<unsigned char>(s[i + 1]))) {
      out.append(before).push_back(s[i]);
      out.append(between).push_back(s[i + 1]);
      out.append(after);
      i += 2;
    } else {
      out.push_back(s[i]);
      ++i;
    }
  }
  return out;
}

// The length of the whitespace character at text[i] as Python's str.split() sees it (ASCII
// whitespace, \x1c-\x1f, and the Unicode spaces and separators, in UTF-8), or 0.
size_t WhitespaceAt(std::string_view text, size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return 1;
  const auto byte = [&](size_t k) { return i + k < text.size() ? static_cast<unsigned char>(text[i + k]) : 0; };
  if (c == 0xC2 && (byte(1) == 0x85 || byte(1) == 0xA0)) return 2;  // U+0085, U+00A0
  if (c == 0xE1 && byte(1) == 0x9A && byte(2) == 0x80) return 3;    // U+1680
  if (c == 0xE2 && byte(1) == 0x80 &&
      ((byte(2) >= 0x80 && byte(2) <= 0x8A) || byte(2) == 0xA8 || byte(2) == 0xA9 || byte(2) == 0xAF)) {
    return 3;  // U+2000-200A, U+2028, U+2029, U+202F
  }
  if (c == 0xE2 && byte(1) == 0x81 && byte(2) == 0x9F) return 3;  // U+205F
  if (c == 0xE3 && byte(1) == 0x80 && byte(2) == 0x80) return 3;  // U+3000
  return 0;
}

// Python's str.split(): runs of whitespace separate words.
std::vector<std::string> Words(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  for (size_t i = 0; i < text.size();) {
    if (const size_t space = WhitespaceAt(text, i)) {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
      i += space;
    } else {
      word.push_back(text[i++]);
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

// Each n-gram (n = 1..4) of the tokens and how often it occurs.
std::map<std::vector<std::string>, int64_t> NgramCounts(const std::vector<std::string>& tokens, size_t n) {
  std::map<std::vector<std::string>, int64_t> counts;
  for (size_t i = 0; i + n <= tokens.size(); ++i) ++counts[{tokens.begin() + i, tokens.begin() + i + n}];
  return counts;
}

// A generation's JSON: the trimmed text, or what a ``` fence around it holds.
std::optional<json> ParsedJson(std::string_view generation) {
  std::string_view text = Trimmed(generation);
  if (text.size() >= 6 && text.substr(0, 3) == "```" && text.substr(text.size() - 3) == "```") {
    text = text.substr(3, text.size() - 6);
    const size_t newline = text.find('\n');  // a language tag ("```json") ends at the first newline
    if (newline != std::string_view::npos && Trimmed(text.substr(0, newline)).find_first_of("{[\"") != 0) {
      text = text.substr(newline + 1);
    }
  }
  try {
    return json::parse(text);
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

// A value's text for comparison: numbers by value (1 and 1.0 are one number, as JSON's data
// model and Python's json module have it), objects with sorted keys, no spaces.
std::string Canonical(const json& value) {
  if (value.is_number()) return fmt::format("{}", value.get<double>());
  if (value.is_array()) {
    std::string out = "[";
    for (const json& item : value) {
      if (out.size() > 1) out += ',';
      out += Canonical(item);
    }
    return out + "]";
  }
  if (value.is_object()) {  // nlohmann::json keeps keys sorted
    std::string out = "{";
    for (const auto& [key, item] : value.items()) {
      if (out.size() > 1) out += ',';
      out += json(key).dump() + ":" + Canonical(item);
    }
    return out + "}";
  }
  return value.dump();
}

// A JSON value's (path, value) pairs: objects' keys joined by "."; anything else is a leaf,
// compared by its canonical text.
void Flatten(const json& value, const std::string& path, std::set<std::pair<std::string, std::string>>& pairs) {
  if (value.is_object()) {
    for (const auto& [key, item] : value.items()) Flatten(item, path.empty() ? key : path + "." + key, pairs);
    if (value.empty() && !path.empty()) pairs.emplace(path, "{}");  // an empty object is a value too
    return;
  }
  pairs.emplace(path, Canonical(value));
}

}  // namespace

std::vector<std::string> RougeTokens(std::string_view text) {
  std::vector<std::string> tokens;
  std::string token;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    const char lower = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch;
    if ((lower >= 'a' && lower <= 'z') || IsDigit(c)) {
      token.push_back(lower);
    } else if (!token.empty()) {
      tokens.push_back(std::move(token));
      token.clear();
    }
  }
  if (!token.empty()) tokens.push_back(std::move(token));
  return tokens;
}

RougeScore RougeL(std::string_view target, std::string_view prediction) {
  const std::vector<std::string> t = RougeTokens(target), p = RougeTokens(prediction);
  if (t.empty() || p.empty()) return {};
  // The longest common subsequence, a row of the table at a time.
  std::vector<int64_t> previous(p.size() + 1, 0), current(p.size() + 1, 0);
  for (size_t i = 1; i <= t.size(); ++i) {
    for (size_t j = 1; j <= p.size(); ++j) {
      current[j] = t[i - 1] == p[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    }
    std::swap(previous, current);
  }
  const auto lcs = static_cast<double>(previous[p.size()]);
  RougeScore score;
  score.precision = lcs / static_cast<double>(p.size());
  score.recall = lcs / static_cast<double>(t.size());
  const double sum = score.precision + score.recall;
  score.fmeasure = sum > 0 ? 2 * score.precision * score.recall / sum : 0.0;
  return score;
}

std::string Tokenize13a(std::string_view text) {
  // sacreBLEU strips trailing whitespace before tokenizing (BLEU._preprocess_segment).
  while (!text.empty() && WhitespaceAt(text, text.size() - 1) == 1) text.remove_suffix(1);
  std::string line(text);
  line = ReplaceAll(line, "<skipped>", "");
  line = ReplaceAll(line, "-\n", "");
  line = ReplaceAll(line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    line = ReplaceAll(line, "&quot;", "\"");
    line = ReplaceAll(line, "&amp;", "&");
    line = ReplaceAll(line, "&lt;", "<");
    line = ReplaceAll(line, "&gt;", ">");
  }
  line = " " + line + " ";
  // Punctuation and symbols become tokens: the class [{-~[-` -&(-+:-@/] (not ' , - . or digits).
  std::string spaced;
  for (const char ch : line) {
    const auto c = static_cast<unsigned char>(ch);
    const bool symbol = (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') ||
                        (c >= '(' && c <= '+') || (c >= ':' && c <= '@') || c == '/';
    if (symbol) {
      spaced.push_back(' ');
      spaced.push_back(ch);
      spaced.push_back(' ');
    } else {
      spaced.push_back(ch);
    }
  }
  const auto not_digit = [](unsigned char c) { return !IsDigit(c); };
  const auto period_or_comma = [](unsigned char c) { return c == '.' || c == ','; };
  // A period or comma is a token unless it is preceded by a digit, or followed by one.
  spaced = SubstitutePairs(spaced, not_digit, period_or_comma, "", " ", " ");
  spaced = SubstitutePairs(spaced, period_or_comma, not_digit, " ", " ", "");
  // A dash after a digit is a token.
  spaced = SubstitutePairs(
      spaced, IsDigit, [](unsigned char c) { return c == '-'; }, "", " ", " ");
  std::string out;
  for (const std::string& word : Words(spaced)) out += (out.empty() ? "" : " ") + word;
  return out;
}

void BleuStatistics::Add(std::string_view hypothesis_text, const std::vector<std::string>& references) {
  const std::vector<std::string> hypothesis = Words(Tokenize13a(hypothesis_text));
  const auto length = static_cast<int64_t>(hypothesis.size());
  // The reference length closest to the hypothesis's (the shorter of two equally close).
  int64_t closest = -1;
  std::vector<std::vector<std::string>> tokenized;
  for (const std::string& reference : references) {
    tokenized.push_back(Words(Tokenize13a(reference)));
    const auto r = static_cast<int64_t>(tokenized.back().size());
    if (closest < 0 || std::abs(r - length) < std::abs(closest - length) ||
        (std::abs(r - length) == std::abs(closest - length) && r < closest)) {
      closest = r;
    }
  }
  ST_CHECK(closest >= 0, "a hypothesis without a reference");
  hypothesis_length += length;
  reference_length += closest;
  for (size_t n = 1; n <= 4; ++n) {
    // Each n-gram counts up to the most times any one reference holds it.
    std::map<std::vector<std::string>, int64_t> most;
    for (const auto& reference : tokenized) {
      for (const auto& [gram, count] : NgramCounts(reference, n)) most[gram] = std::max(most[gram], count);
    }
    for (const auto& [gram, count] : NgramCounts(hypothesis, n)) {
      const auto it = most.find(gram);
      if (it != most.end()) correct[n - 1] += std::min(count, it->second);
    }
    total[n - 1] += std::max<int64_t>(0, length - static_cast<int64_t>(n) + 1);
  }
}

BleuScore BleuStatistics::Score() const {
  BleuScore bleu;
  bleu.hypothesis_length = hypothesis_length;
  bleu.reference_length = reference_length;
  const double c = static_cast<double>(hypothesis_length), r = static_cast<double>(reference_length);
  bleu.brevity_penalty = c >= r ? 1.0 : (c > 0 ? std::exp(1.0 - r / c) : 0.0);
  // No n-gram of any order matches: 0, with every precision 0 (as sacreBLEU returns early).
  if (correct[0] + correct[1] + correct[2] + correct[3] == 0) return bleu;
  // sacreBLEU's "exp" smoothing: the k-th order with no match counts 1 / 2^k matches.
  double smooth = 1.0, log_sum = 0.0;
  for (int n = 0; n < 4; ++n) {
    if (total[n] == 0) return bleu;  // no n-grams of this order at all: BLEU is 0
    if (correct[n] == 0) {
      smooth *= 2;
      bleu.precisions[n] = 100.0 / (smooth * static_cast<double>(total[n]));
    } else {
      bleu.precisions[n] = 100.0 * static_cast<double>(correct[n]) / static_cast<double>(total[n]);
    }
    log_sum += std::log(bleu.precisions[n]);
  }
  bleu.score = bleu.brevity_penalty * std::exp(log_sum / 4.0);
  return bleu;
}

BleuScore CorpusBleu(const std::vector<std::string>& hypotheses,
                     const std::vector<std::vector<std::string>>& references) {
  ST_CHECK(hypotheses.size() == references.size(), "{} hypotheses but {} reference lists", hypotheses.size(),
           references.size());
  BleuStatistics statistics;
  for (size_t s = 0; s < hypotheses.size(); ++s) statistics.Add(hypotheses[s], references[s]);
  return statistics.Score();
}

bool ExactMatch(std::string_view prediction, std::string_view reference) {
  return Trimmed(prediction) == Trimmed(reference);
}

bool ParsesAsJson(std::string_view generation) { return ParsedJson(generation).has_value(); }

double FieldCounts::Precision() const {
  return predicted > 0 ? static_cast<double>(correct) / static_cast<double>(predicted) : 0.0;
}
double FieldCounts::Recall() const {
  return reference > 0 ? static_cast<double>(correct) / static_cast<double>(reference) : 0.0;
}
double FieldCounts::F1() const {
  const double p = Precision(), r = Recall();
  return p + r > 0 ? 2 * p * r / (p + r) : 0.0;
}

void AddJsonFields(std::string_view generation, std::string_view reference, FieldCounts& counts) {
  const std::optional<json> expected = ParsedJson(reference);
  if (!expected || !expected->is_object()) {
    Fail(ErrorCode::kInvalidArgument, "the reference must be a JSON object (as text), got: {}",
         std::string(reference.substr(0, 80)));
  }
  std::set<std::pair<std::string, std::string>> want, got;
  Flatten(*expected, "", want);
  if (const std::optional<json> produced = ParsedJson(generation)) Flatten(*produced, "", got);
  counts.reference += static_cast<int64_t>(want.size());
  counts.predicted += static_cast<int64_t>(got.size());
  for (const auto& pair : got) counts.correct += want.count(pair) ? 1 : 0;
}

double PassAtK(int64_t n, int64_t correct, int64_t k) {
  ST_CHECK(n >= 1 && k >= 1 && k <= n && correct >= 0 && correct <= n, "pass@{} of {} samples, {} correct", k, n,
           correct);
  if (n - correct < k) return 1.0;
  // 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i), without large binomials.
  double none = 1.0;
  for (int64_t i = n - correct + 1; i <= n; ++i) none *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - none;
}

namespace {

// Where GenerationScorer's sums are; pass@K's follow, in the order asked.
enum SumIndex : size_t {
  kSamples,
  kExact,
  kParsed,
  kRougeL,
  kBleuCorrect,                   // 4 values
  kBleuTotal = kBleuCorrect + 4,  // 4 values
  kHypothesisLength = kBleuTotal + 4,
  kReferenceLength,
  kFieldsPredicted,
  kFieldsReference,
  kFieldsCorrect,
  kProblems,
  kFixedSums,
};

// K of "pass@K" or "pass_at_K" (a positive integer); 0 for another name.
int64_t PassK(const std::string& name) {
  for (const std::string_view prefix : {std::string_view("pass@"), std::string_view("pass_at_")}) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.empty() || digits.size() > 6 || !std::all_of(digits.begin(), digits.end(), IsDigit)) return 0;
    return std::stoll(digits);
  }
  return 0;
}

}  // namespace

GenerationScorer::GenerationScorer(std::vector<std::string> metrics, int64_t samples_per_problem)
    : metrics_(std::move(metrics)), samples_per_problem_(samples_per_problem) {
  ST_CHECK(samples_per_problem >= 1, "{} samples per problem", samples_per_problem);
  const auto add_k = [this](int64_t k) {
    if (std::find(pass_k_.begin(), pass_k_.end(), k) == pass_k_.end()) pass_k_.push_back(k);
  };
  for (const std::string& name : metrics_) {
    if (std::find(Known().begin(), Known().end(), name) != Known().end()) continue;
    if (name == "pass_at_k") {
      add_k(1);
      add_k(samples_per_problem);
      continue;
    }
    if (const int64_t k = PassK(name); k > 0) {
      if (k > samples_per_problem) {
        Fail(ErrorCode::kInvalidArgument, "{} needs at least {} samples per problem, not {} (--num-samples)", name, k,
             samples_per_problem);
      }
      add_k(k);
      continue;
    }
    std::string known;
    for (const std::string& k : Known()) known += (known.empty() ? "" : ", ") + k;
    Fail(ErrorCode::kInvalidArgument, "unknown generation metric '{}'; expected one of: {}, pass@K (K a number)", name,
         known);
  }
  sums_.assign(kFixedSums + pass_k_.size(), 0.0);
}

const std::vector<std::string>& GenerationScorer::Known() {
  static const std::vector<std::string> kKnown = {"exact_match", "rouge_l", "bleu", "json_parse_rate", "json_field_f1"};
  return kKnown;
}

void GenerationScorer::Add(const std::string& generated, const std::string& reference, const std::string& where) {
  const auto wants = [this](const char* name) {
    return std::find(metrics_.begin(), metrics_.end(), name) != metrics_.end();
  };
  Sum(kSamples) += 1;
  Sum(kExact) += ExactMatch(generated, reference) ? 1 : 0;
  Sum(kParsed) += ParsesAsJson(generated) ? 1 : 0;
  if (wants("rouge_l")) Sum(kRougeL) += RougeL(reference, generated).fmeasure;
  if (wants("bleu")) {
    BleuStatistics bleu;
    bleu.Add(generated, {reference});
    for (size_t n = 0; n < 4; ++n) {
      Sum(kBleuCorrect + n) += static_cast<double>(bleu.correct[n]);
      Sum(kBleuTotal + n) += static_cast<double>(bleu.total[n]);
    }
    Sum(kHypothesisLength) += static_cast<double>(bleu.hypothesis_length);
    Sum(kReferenceLength) += static_cast<double>(bleu.reference_length);
  }
  if (wants("json_field_f1")) {
    FieldCounts fields;
    try {
      AddJsonFields(generated, reference, fields);
    } catch (const Error& e) {
      Fail(ErrorCode::kInvalidArgument, "{}: json_field_f1: {}", where, e.what());
    }
    Sum(kFieldsPredicted) += static_cast<double>(fields.predicted);
    Sum(kFieldsReference) += static_cast<double>(fields.reference);
    Sum(kFieldsCorrect) += static_cast<double>(fields.correct);
  }
}

void GenerationScorer::AddTested(int64_t passed) {
  Sum(kProblems) += 1;
  for (size_t i = 0; i < pass_k_.size(); ++i) Sum(kFixedSums + i) += PassAtK(samples_per_problem_, passed, pass_k_[i]);
}

nlohmann::json GenerationScorer::Metrics() const {
  // The sums hold counts exactly (doubles represent integers up to 2^53).
  const auto count = [this](size_t index) { return static_cast<int64_t>(std::llround(sums_[index])); };
  nlohmann::json out = {{"generated", count(kSamples)}};
  const double n = std::max(1.0, sums_[kSamples]);
  for (const std::string& name : metrics_) {
    if (name == "exact_match") out[name] = sums_[kExact] / n;
    if (name == "rouge_l") out[name] = sums_[kRougeL] / n;
    if (name == "json_parse_rate") out[name] = sums_[kParsed] / n;
    if (name == "json_field_f1") {
      const FieldCounts fields{count(kFieldsPredicted), count(kFieldsReference), count(kFieldsCorrect)};
      out[name] = fields.F1();
    }
    if (name == "bleu") {
      BleuStatistics bleu;
      for (size_t i = 0; i < 4; ++i) {
        bleu.correct[i] = count(kBleuCorrect + i);
        bleu.total[i] = count(kBleuTotal + i);
      }
      bleu.hypothesis_length = count(kHypothesisLength);
      bleu.reference_length = count(kReferenceLength);
      out[name] = bleu.Score().score;
    }
  }
  if (RunsTests()) {
    out["problems"] = count(kProblems);
    const double problems = std::max(1.0, sums_[kProblems]);
    for (size_t i = 0; i < pass_k_.size(); ++i)
      out[fmt::format("pass@{}", pass_k_[i])] = sums_[kFixedSums + i] / problems;
  }
  return out;
}

}  // namespace shardtune
