#include "common/hf_config.h"

namespace shardtune {

void RequirePositiveField(int64_t value, const char* key, const std::string& where) {
  if (value <= 0) Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be positive, got {}", where, key, value);
}

void RequireSizeField(int64_t value, const char* key, int64_t max, const std::string& where) {
  if (value < 1 || value > max) {
    Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be between 1 and {}{}, got {}", where, key, max,
         value > max ? " (larger than any real model)" : "", value);
  }
}

void RequireTokenIdField(int64_t id, const char* key, int64_t vocab_size, bool allow_none, const std::string& where) {
  if ((id < 0 && !(allow_none && id == -1)) || id >= vocab_size) {
    Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be a token id below vocab_size {}{}, got {}", where, key,
         vocab_size, allow_none ? " (or -1: none)" : "", id);
  }
}

void RequireParameterCount(int64_t parameters, const std::string& where) {
  if (parameters > config_limits::kParameters) {
    Fail(ErrorCode::kInvalidArgument,
         "{}: the sizes (vocab_size, hidden_size, intermediate_size, num_hidden_layers, heads) imply {} parameters, "
         "more than any real model (at most {})",
         where, parameters, config_limits::kParameters);
  }
}

void ReadHead(const nlohmann::json& root, const std::string& where, ModelTask* task, std::vector<std::string>* labels) {
  if (root.contains("architectures") && root["architectures"].is_array() && !root["architectures"].empty() &&
      root["architectures"][0].is_string()) {
    const std::string architecture = root["architectures"][0].get<std::string>();
    if (architecture.find("ForSequenceClassification") != std::string::npos) *task = ModelTask::kSequenceClassification;
    if (architecture.find("ForTokenClassification") != std::string::npos) *task = ModelTask::kTokenClassification;
  }
  if (root.contains("id2label") && root["id2label"].is_object()) {
    if (root["id2label"].size() > static_cast<size_t>(config_limits::kLabels)) {
      Fail(ErrorCode::kInvalidArgument, "{}: 'id2label' must hold at most {} classes, got {}", where,
           config_limits::kLabels, root["id2label"].size());
    }
    labels->assign(root["id2label"].size(), "");
    for (const auto& [key, value] : root["id2label"].items()) {
      size_t id = labels->size();
      try {
        id = std::stoul(key);
      } catch (const std::exception&) {
      }
      if (id >= labels->size() || !value.is_string())
        Fail(ErrorCode::kInvalidArgument, "{}: id2label must map 0..{} to names", where, labels->size() - 1);
      (*labels)[id] = value.get<std::string>();
    }
  }
  if (*task != ModelTask::kCausalLm && labels->empty())
    Fail(ErrorCode::kInvalidArgument, "{}: a classification model needs id2label (its classes)", where);
}

}  // namespace shardtune
