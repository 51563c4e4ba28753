// tokenizer.json normalizers: one builder per "type", dispatched through Normalizers().
#include <algorithm>

#include "worker/data/tokenizer/hf_stages.h"
#include "worker/data/tokenizer/precompiled_charsmap.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::hf {

namespace {

Normalizer BuildSequence(const json& node, const std::string& where) {
  std::vector<Normalizer> parts = ParseParts(node, "normalizers", where, &ParseNormalizer);
  return [parts = std::move(parts)](std::string text) {
    for (const auto& n : parts) text = n(std::move(text));
    return text;
  };
}

Normalizer BuildPrepend(const json& node, const std::string& where) {
  const std::string prepend = StringField(node, "prepend", where);
  return [prepend](std::string text) { return text.empty() ? text : prepend + text; };
}

Normalizer BuildReplace(const json& node, const std::string& where) {
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

template <NormalizationForm kForm>
Normalizer BuildUnicodeForm(const json&, const std::string&) {
  return [](std::string text) { return NormalizeUnicode(text, kForm); };
}

Normalizer BuildLowercase(const json&, const std::string&) {
  return [](std::string text) { return LowercaseUnicode(text); };
}

Normalizer BuildStripAccents(const json&, const std::string&) {
  return [](std::string text) { return StripCombiningMarks(text); };
}

Normalizer BuildStrip(const json& node, const std::string&) {
  const bool left = node.value("strip_left", true), right = node.value("strip_right", true);
  return [left, right](std::string t) {
    const char* ws = " \t\n\r\f\v";
    if (right) t.erase(t.find_last_not_of(ws) + 1);
    if (left) t.erase(0, std::min(t.size(), t.find_first_not_of(ws)));
    return t;
  };
}

// CJK ideographs (the BMP blocks BERT checks) get spaces around them so they become words of their own.
bool IsCjkIdeograph(const std::string& c) {
  return c.size() >= 3 &&
         ((c >= "\xE4\xB8\x80" && c <= "\xE9\xBF\xBF") || (c >= "\xE3\x90\x80" && c <= "\xE4\xB6\xBF"));
}

Normalizer BuildBert(const json& node, const std::string&) {
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
      out += chinese && IsCjkIdeograph(c) ? " " + c + " " : c;
    }
    if (strip_accents) out = StripCombiningMarks(NormalizeUnicode(out, NormalizationForm::kNfd));
    if (lowercase) out = LowercaseUnicode(out);
    return out;
  };
}

// SentencePiece's compiled rules (T5, ALBERT, XLNet...), applied grapheme by grapheme as tokenizers
// does. A null or empty charsmap (a model trained without normalization) changes nothing.
Normalizer BuildPrecompiled(const json& node, const std::string& where) {
  const json& blob = Field(node, "precompiled_charsmap", where);
  if (blob.is_null() || (blob.is_string() && blob.get<std::string>().empty())) return nullptr;
  auto charsmap = std::make_shared<const PrecompiledCharsmap>(
      PrecompiledCharsmap::ParseBase64(StringField(node, "precompiled_charsmap", where), where + ": Precompiled"));
  return [charsmap](std::string text) { return charsmap->NormalizeByGrapheme(text); };
}

}  // namespace

Normalizer ParseNormalizer(const json& node, const std::string& where) {
  static const Registry<Normalizer> registry = {
      {"BertNormalizer", &BuildBert},
      {"Lowercase", &BuildLowercase},
      {"NFC", &BuildUnicodeForm<NormalizationForm::kNfc>},
      {"NFD", &BuildUnicodeForm<NormalizationForm::kNfd>},
      {"NFKC", &BuildUnicodeForm<NormalizationForm::kNfkc>},
      {"NFKD", &BuildUnicodeForm<NormalizationForm::kNfkd>},
      {"Precompiled", &BuildPrecompiled},
      {"Prepend", &BuildPrepend},
      {"Replace", &BuildReplace},
      {"Sequence", &BuildSequence},
      {"Strip", &BuildStrip},
      {"StripAccents", &BuildStripAccents},
  };
  return ParseOptionalStage(registry, "normalizer", node, where);
}

}  // namespace shardtune::hf
