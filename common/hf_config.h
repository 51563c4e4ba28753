#pragma once
// Reading Hugging Face config.json files: typed optional fields, and what every model family's
// config says the same way (its head: architectures and id2label).

#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "common/error.h"
#include "common/job_spec.h"

namespace shardtune {

// Reads an optional field, checking its JSON type; absent or null keeps the default.
template <typename T>
void ReadConfigField(const nlohmann::json& root, const char* key, T* out, const std::string& where) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) return;
  const char* expected = "a string";
  bool ok = it->is_string();
  if constexpr (std::is_same_v<T, bool>) {
    expected = "true or false", ok = it->is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    expected = "an integer", ok = it->is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    expected = "a number", ok = it->is_number();
  }
  if (!ok) Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be {}, got {}", where, key, expected, it->dump());
  *out = it->get<T>();
}

void RequirePositiveField(int64_t value, const char* key, const std::string& where);

// The largest size of each kind a config.json may state. Every released model is far inside them
// (Llama 3.1 405B: hidden 16384, intermediate 53248, 126 layers, 128 heads; Gemma: a vocabulary of
// 256000, head_dim 256), and they are small enough that no product the models form from them
// (a layer's weights, the parameter count) overflows int64: a typo or hostile bytes are refused
// naming the key before any tensor is shaped from them (LibTorch would fail with a negative or
// absurd dimension, or the allocator abort).
namespace config_limits {
inline constexpr int64_t kVocabSize = int64_t{1} << 22;         // 4,194,304
inline constexpr int64_t kHiddenSize = int64_t{1} << 17;        // 131,072
inline constexpr int64_t kIntermediateSize = int64_t{1} << 20;  // 1,048,576
inline constexpr int64_t kLayers = 1024;
inline constexpr int64_t kHeads = 1024;
inline constexpr int64_t kHeadDim = 4096;
inline constexpr int64_t kPositions = int64_t{1} << 24;  // 16,777,216 (Llama 4 Scout: 10M)
inline constexpr int64_t kTypeVocabSize = 1024;          // BERT's segments (2 in every release)
inline constexpr int64_t kLabels = 1 << 16;              // id2label's classes
// The parameters a config implies: 2.2 trillion, beyond any dense model released.
inline constexpr int64_t kParameters = int64_t{1} << 41;
}  // namespace config_limits

// A size field of config.json: its key, the member it is read into, and its upper limit. A
// config reader lists its sizes once, reads each (ReadConfigField), then, once every field has
// been read (a default may depend on another), requires each within 1..max (RequireSizeField).
struct ConfigSize {
  const char* key;
  int64_t* value;
  int64_t max;
};

// Requires 1 <= value <= max: an error naming `where` (config.json), the key, the range and the value.
void RequireSizeField(int64_t value, const char* key, int64_t max, const std::string& where);
// Requires a token id (pad, bos, eos) to name a row of the vocabulary: 0 <= id < vocab_size (and
// -1, "none", where `allow_none`).
void RequireTokenIdField(int64_t id, const char* key, int64_t vocab_size, bool allow_none, const std::string& where);
// Requires the parameter count the sizes imply (computed by the caller from fields within their
// limits, so without overflow) to stay within config_limits::kParameters.
void RequireParameterCount(int64_t parameters, const std::string& where);

// The head a config declares: *ForSequenceClassification or *ForTokenClassification in
// architectures (else a causal LM head), and the classes of id2label in id order. A classifier
// without id2label is an error naming `where`.
void ReadHead(const nlohmann::json& root, const std::string& where, ModelTask* task, std::vector<std::string>* labels);

}  // namespace shardtune
