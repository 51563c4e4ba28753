#include "worker/data/tokenizer/hf_json.h"

#include "common/error.h"
#include "common/hf_config.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::hf {

void Malformed(const std::string& where, const std::string& what) {
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

int64_t CountField(const json& node, const char* key, int64_t fallback, int64_t max, const std::string& where) {
  if (!node.contains(key) || node[key].is_null()) return fallback;
  const json& value = node[key];
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > max)
    Malformed(where, fmt::format("'{}' must be an integer in [0, {}], got {}", key, max, value.dump()));
  return value.get<int64_t>();
}

int64_t TokenId(const json& value, const std::string& what, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() >= config_limits::kVocabSize) {
    Malformed(where, fmt::format("{} must be a token id, an integer in [0, {}), got {}", what,
                                 config_limits::kVocabSize, value.dump()));
  }
  return value.get<int64_t>();
}

std::string MetaspacePrependScheme(const json& node) {
  std::string scheme = node.value("prepend_scheme", std::string());
  if (scheme.empty()) scheme = node.value("add_prefix_space", true) ? "always" : "never";
  return scheme;
}

std::string MetaspaceReplacement(const json& node, const std::string& where) {
  if (!node.contains("replacement")) return kMetaspace;
  const std::string replacement = StringField(node, "replacement", where);
  if (Utf8Characters(replacement).size() != 1)
    Malformed(where, fmt::format("Metaspace's 'replacement' must be one character, got \"{}\"", replacement));
  return replacement;
}

void ReplaceAll(std::string& text, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

Pattern Pattern::Parse(const json& node, const std::string& where) {
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

std::vector<std::pair<size_t, size_t>> Pattern::FindAll(std::string_view text) const {
  if (regex) return regex->FindAll(text);
  std::vector<std::pair<size_t, size_t>> matches;
  if (literal.empty()) return matches;
  for (size_t at = text.find(literal); at != std::string_view::npos; at = text.find(literal, at + literal.size())) {
    matches.emplace_back(at, at + literal.size());
  }
  return matches;
}

}  // namespace shardtune::hf
