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

// The head a config declares: *ForSequenceClassification or *ForTokenClassification in
// architectures (else a causal LM head), and the classes of id2label in id order. A classifier
// without id2label is an error naming `where`.
void ReadHead(const nlohmann::json& root, const std::string& where, ModelTask* task, std::vector<std::string>* labels);

}  // namespace shardtune
