#pragma once
// What the tokenizer.json stage files (hf_normalizers.cc, hf_pre_tokenizers.cc, hf_models.cc,
// hf_post_processors.cc, hf_decoders.cc) share: reading fields with errors that name where in the
// file they are, string-or-regex patterns, and the registry through which each stage maps a node's
// "type" to the function that builds it. Adding a stage type is one builder and one registry line.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "worker/data/tokenizer/regex.h"

namespace shardtune::hf {

using json = nlohmann::json;
// Text split into the parts the pre-tokenizers and the model see one at a time.
using Pieces = std::vector<std::string>;

inline constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// Throws Error(kInvalidArgument) "where: what"; `where` is the file and the stage ("x.json: decoder").
[[noreturn]] void Malformed(const std::string& where, const std::string& what);
// node[key], or Malformed naming the missing key.
const json& Field(const json& node, const char* key, const std::string& where);
// node[key] as a string, or Malformed naming the key and what it holds instead.
std::string StringField(const json& node, const char* key, const std::string& where);
// node[key] as an integer in [0, max]; `fallback` when the key is absent or null; else Malformed
// naming the key (a number is never converted to an int out of its range).
int64_t CountField(const json& node, const char* key, int64_t fallback, int64_t max, const std::string& where);
// `value` as a token id: an integer in [0, config_limits::kVocabSize), the largest vocabulary a
// config.json may declare (ids index tables sized by the largest one); else Malformed naming `what`.
int64_t TokenId(const json& value, const std::string& what, const std::string& where);

// Metaspace's prepend_scheme (pre-tokenizer and decoder alike): "always", "first" or "never";
// older files say add_prefix_space instead.
std::string MetaspacePrependScheme(const json& node);
// A Metaspace stage's `replacement` (kMetaspace when absent): one character, as tokenizers
// declares it (a char); a longer string is Malformed (every space would become it).
std::string MetaspaceReplacement(const json& node, const std::string& where);

// Every occurrence of `from` replaced, left to right, without rescanning what was inserted.
void ReplaceAll(std::string& text, const std::string& from, const std::string& to);

// A string or regex pattern, as Replace and Split take them: {"String": ...} or {"Regex": ...}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;

  // Malformed when the node is neither form or the regex does not compile.
  static Pattern Parse(const json& node, const std::string& where);
  // Non-overlapping matches, left to right, as [begin, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;
};

// A stage's builders by tokenizer.json "type". A builder may return an empty stage (nullptr) for
// a type that changes nothing the tokenizer computes (ByteLevel post-processing only moves offsets).
template <typename Stage>
using Builder = Stage (*)(const json& node, const std::string& where);
template <typename Stage>
using Registry = std::map<std::string, Builder<Stage>, std::less<>>;

// Builds `node` with the builder registered for `type`; an unknown type is Malformed naming the
// stage ("normalizer"), the type and the supported ones.
template <typename Stage>
Stage BuildStage(const Registry<Stage>& registry, const char* stage, const std::string& type, const json& node,
                 const std::string& where) {
  const auto it = registry.find(type);
  if (it == registry.end()) {
    std::vector<std::string> supported;
    for (const auto& entry : registry) supported.push_back(entry.first);
    Malformed(where,
              fmt::format("{} type '{}' is not supported (supported: {})", stage, type, fmt::join(supported, ", ")));
  }
  return it->second(node, where);
}

// An optional stage of the pipeline: a null `node` is no stage (nullptr); otherwise the stage its
// "type" names, built as BuildStage does.
template <typename Stage>
Stage ParseOptionalStage(const Registry<Stage>& registry, const char* stage, const json& node,
                         const std::string& where) {
  if (node.is_null()) return nullptr;
  return BuildStage(registry, stage, StringField(node, "type", where), node, where);
}

// The stages a Sequence lists under `key`, each built by `parse`; empty ones are left out.
template <typename Stage>
std::vector<Stage> ParseParts(const json& node, const char* key, const std::string& where,
                              Stage (*parse)(const json&, const std::string&)) {
  const json& list = Field(node, key, where);
  if (!list.is_array()) Malformed(where, fmt::format("'{}' must be a list, got {}", key, list.dump()));
  std::vector<Stage> parts;
  for (const json& part : list) {
    if (Stage stage = parse(part, where)) parts.push_back(std::move(stage));
  }
  return parts;
}

}  // namespace shardtune::hf
