#include "launcher/server/event_fields.h"

namespace shardtune::server {

using Json = nlohmann::ordered_json;

v1::JobEventLevel DefaultEventLevel(v1::JobEventKind kind, const v1::Job& job_after) {
  if (kind != v1::JOB_EVENT_KIND_STATUS) return v1::JOB_EVENT_LEVEL_INFO;
  if (job_after.status() == v1::JOB_STATUS_FAILED) return v1::JOB_EVENT_LEVEL_ERROR;
  if (job_after.status() == v1::JOB_STATUS_CANCELLED) return v1::JOB_EVENT_LEVEL_WARNING;
  return v1::JOB_EVENT_LEVEL_INFO;
}

Json EventData(const v1::JobEvent& event) {
  Json data = Json::object();
  const bool evaluation = event.kind() == v1::JOB_EVENT_KIND_METRICS;
  if (event.kind() != v1::JOB_EVENT_KIND_PROGRESS && !evaluation) return data;
  const auto& m = event.job().metrics();
  const auto figure = [&](const char* key) { return m.count(key) ? Json(m.at(key)) : Json(); };
  data["step"] = event.job().step();
  data["total_steps"] = event.job().total_steps();
  data["train_loss"] = figure("loss");
  // The validation figures only at the step of their evaluation (the job's map keeps the latest).
  if (evaluation) {
    data["valid_loss"] = figure("val_loss");
    data["valid_mean_token_accuracy"] = figure("token_accuracy");
    data["full_valid_loss"] = figure("val_loss");
    data["full_valid_mean_token_accuracy"] = figure("token_accuracy");
  }
  data["learning_rate"] = figure("lr");
  data["tokens_per_second"] = figure("tokens_per_s");
  return data;
}

namespace {

void SetValue(const Json& value, google::protobuf::Value& v) {
  if (value.is_number()) {
    v.set_number_value(value.get<double>());
  } else if (value.is_string()) {
    v.set_string_value(value.get<std::string>());
  } else if (value.is_boolean()) {
    v.set_bool_value(value.get<bool>());
  } else if (value.is_object()) {
    *v.mutable_struct_value() = ToStruct(value);
  } else if (value.is_array()) {
    for (const Json& element : value) SetValue(element, *v.mutable_list_value()->add_values());
  } else {
    v.set_null_value(google::protobuf::NULL_VALUE);
  }
}

}  // namespace

google::protobuf::Struct ToStruct(const Json& object) {
  google::protobuf::Struct out;
  for (const auto& [key, value] : object.items()) SetValue(value, (*out.mutable_fields())[key]);
  return out;
}

std::vector<std::pair<std::string, double>> CheckpointFigures(int64_t step,
                                                              const std::map<std::string, double>& job_metrics) {
  std::vector<std::pair<std::string, double>> figures = {{"step", static_cast<double>(step)}};
  const auto put = [&](const char* name, const char* key) {
    if (const auto it = job_metrics.find(key); it != job_metrics.end()) figures.emplace_back(name, it->second);
  };
  put("train_loss", "loss");
  put("train_mean_token_accuracy", "train_token_accuracy");
  put("valid_loss", "val_loss");
  put("valid_mean_token_accuracy", "token_accuracy");
  put("full_valid_loss", "val_loss");
  put("full_valid_mean_token_accuracy", "token_accuracy");
  return figures;
}

}  // namespace shardtune::server
