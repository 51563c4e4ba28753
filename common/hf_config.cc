#include "common/hf_config.h"

namespace shardtune {

void RequirePositiveField(int64_t value, const char* key, const std::string& where) {
  if (value <= 0) Fail(ErrorCode::kInvalidArgument, "{}: '{}' must be positive, got {}", where, key, value);
}

void ReadHead(const nlohmann::json& root, const std::string& where, ModelTask* task, std::vector<std::string>* labels) {
  if (root.contains("architectures") && root["architectures"].is_array() && !root["architectures"].empty() &&
      root["architectures"][0].is_string()) {
    const std::string architecture = root["architectures"][0].get<std::string>();
    if (architecture.find("ForSequenceClassification") != std::string::npos) *task = ModelTask::kSequenceClassification;
    if (architecture.find("ForTokenClassification") != std::string::npos) *task = ModelTask::kTokenClassification;
  }
  if (root.contains("id2label") && root["id2label"].is_object()) {
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
