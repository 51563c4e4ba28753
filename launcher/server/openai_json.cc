#include "launcher/server/openai_json.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <set>

#include "launcher/api_values.h"
#include "launcher/server/event_fields.h"

namespace shardtune::server::openai {

namespace {

constexpr int64_t kMaxEpochs = 50;
constexpr int64_t kMaxBatchSize = 256;
constexpr double kMaxLearningRateMultiplier = 10;
constexpr size_t kMaxSuffix = 64;
constexpr size_t kMaxMetadataPairs = 16, kMaxMetadataKey = 64, kMaxMetadataValue = 512;

[[noreturn]] void Invalid(const std::string& param, const std::string& message,
                          const std::string& code = "invalid_value") {
  throw ApiError(400, message, param, code);
}

// A string field: absent or null gives "" (unless required).
std::string StringField(const Json& body, const std::string& key, bool required) {
  const auto it = body.find(key);
  if (it == body.end() || it->is_null()) {
    if (required) Invalid(key, fmt::format("missing required parameter: '{}'", key), "missing_required_parameter");
    return "";
  }
  if (!it->is_string()) Invalid(key, fmt::format("'{}' must be a string", key), "invalid_type");
  if (required && it->get<std::string>().empty()) Invalid(key, fmt::format("'{}' must not be empty", key));
  return it->get<std::string>();
}

bool PlainName(const std::string& text) {
  return std::all_of(text.begin(), text.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '.' || c == '_' || c == '-'; });
}

// {"n_epochs", "batch_size", "learning_rate_multiplier"}, each "auto" or a number; `at` is the
// object's path for `param`.
RequestedHyperparameters ParseHyperparameters(const Json& value, const std::string& at) {
  RequestedHyperparameters out;
  if (value.is_null()) return out;
  if (!value.is_object()) Invalid(at, fmt::format("'{}' must be an object", at), "invalid_type");
  for (const auto& [key, v] : value.items()) {
    const std::string param = at + "." + key;
    if (key != "n_epochs" && key != "batch_size" && key != "learning_rate_multiplier")
      Invalid(param, fmt::format("unknown parameter '{}' (n_epochs, batch_size, learning_rate_multiplier)", param),
              "unknown_parameter");
    if (v.is_null() || (v.is_string() && v.get<std::string>() == "auto")) continue;
    if (key == "learning_rate_multiplier") {
      if (!v.is_number() || v.get<double>() <= 0 || v.get<double>() > kMaxLearningRateMultiplier)
        Invalid(param, fmt::format("'{}' must be \"auto\" or a number in (0, {}]", param, kMaxLearningRateMultiplier));
      out.learning_rate_multiplier = v.get<double>();
      continue;
    }
    const int64_t most = key == "n_epochs" ? kMaxEpochs : kMaxBatchSize;
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > most)
      Invalid(param, fmt::format("'{}' must be \"auto\" or an integer from 1 to {}", param, most));
    (key == "n_epochs" ? out.n_epochs : out.batch_size) = v.get<int64_t>();
  }
  return out;
}

// `method`: {type: supervised, supervised: {hyperparameters: {...}}}; dpo and reinforcement refused.
RequestedHyperparameters ParseMethod(const Json& method) {
  if (!method.is_object()) Invalid("method", "'method' must be an object", "invalid_type");
  for (const auto& [key, v] : method.items()) {
    if (key != "type" && key != "supervised" && key != "dpo" && key != "reinforcement")
      Invalid("method." + key, fmt::format("unknown parameter 'method.{}'", key), "unknown_parameter");
  }
  const auto type = method.find("type");
  if (type == method.end() || !type->is_string())
    Invalid("method.type", "'method.type' is required: \"supervised\"", "missing_required_parameter");
  const std::string name = type->get<std::string>();
  if (name == "dpo" || name == "reinforcement")
    Invalid("method.type",
            fmt::format("method.type '{}' is not supported by this server yet; use \"supervised\"", name),
            "unsupported_method");
  if (name != "supervised") Invalid("method.type", fmt::format("method.type '{}': expected \"supervised\"", name));
  for (const char* other : {"dpo", "reinforcement"}) {
    if (method.contains(other) && !method[other].is_null())
      Invalid(std::string("method.") + other, fmt::format("'method.{}' does not go with type supervised", other));
  }
  const auto supervised = method.find("supervised");
  if (supervised == method.end() || supervised->is_null()) return {};
  if (!supervised->is_object()) Invalid("method.supervised", "'method.supervised' must be an object", "invalid_type");
  for (const auto& [key, v] : supervised->items()) {
    if (key != "hyperparameters")
      Invalid("method.supervised." + key, fmt::format("unknown parameter 'method.supervised.{}'", key),
              "unknown_parameter");
  }
  const auto hp = supervised->find("hyperparameters");
  return hp == supervised->end() ? RequestedHyperparameters{}
                                 : ParseHyperparameters(*hp, "method.supervised.hyperparameters");
}

std::map<std::string, std::string> ParseMetadata(const Json& value) {
  std::map<std::string, std::string> out;
  if (value.is_null()) return out;
  if (!value.is_object()) Invalid("metadata", "'metadata' must be an object of strings", "invalid_type");
  if (value.size() > kMaxMetadataPairs)
    Invalid("metadata", fmt::format("'metadata' has {} keys; at most {}", value.size(), kMaxMetadataPairs));
  for (const auto& [key, v] : value.items()) {
    if (key.empty() || key.size() > kMaxMetadataKey)
      Invalid("metadata", fmt::format("metadata key '{}': 1 to {} characters", key, kMaxMetadataKey));
    if (!v.is_string() || v.get<std::string>().size() > kMaxMetadataValue)
      Invalid("metadata." + key,
              fmt::format("metadata '{}': a string of at most {} characters", key, kMaxMetadataValue));
    out[key] = v.get<std::string>();
  }
  return out;
}

Json NullIfEmpty(const std::string& text) { return text.empty() ? Json() : Json(text); }
Json SecondsOrNull(int64_t ms) { return ms > 0 ? Json(ms / 1000) : Json(); }

Json HyperparametersObject(const Hyperparameters& h) {
  return {
      {"n_epochs", h.n_epochs}, {"batch_size", h.batch_size}, {"learning_rate_multiplier", h.learning_rate_multiplier}};
}

// A gRPC job's fields in OpenAI's terms, from its spec: the model directory as `model`, the data
// paths as the files, the training keys as hyperparameters.
OpenAiFields FieldsFromSpec(const std::string& spec_yaml) {
  OpenAiFields f;
  try {
    const YAML::Node spec = YAML::Load(spec_yaml);
    f.model = spec["model"]["path"].as<std::string>("");
    f.training_file = spec["data"]["train"].as<std::string>("");
    f.validation_file = spec["data"]["validation"].as<std::string>("");
    const YAML::Node training = spec["training"];
    f.hyperparameters.n_epochs = training["epochs"].as<int64_t>(1);
    f.hyperparameters.batch_size = training["global_batch_size"].as<int64_t>(1);
    f.hyperparameters.learning_rate_multiplier = training["optimizer"]["lr"].as<double>(5e-5) / kBaseLearningRate;
    f.seed = training["seed"].as<int64_t>(42);
  } catch (const YAML::Exception&) {
    // A spec the server stored parses; anything else shows what could be read.
  }
  return f;
}

Json ErrorObject(const v1::Job& job) {
  if (job.status() != v1::JOB_STATUS_FAILED) return Json();
  return {{"code", NullIfEmpty(api::ShortName(job.error().code()))},  // "invalid_data"
          {"message", job.error().message().empty() ? "the job failed" : job.error().message()},
          {"param", job.error().code() == v1::JOB_ERROR_CODE_INVALID_DATA ? Json("training_file") : Json()}};
}

// OpenAI's level names: info, warn, error.
const char* EventLevel(const v1::JobEvent& event) {
  switch (event.level()) {
    case v1::JOB_EVENT_LEVEL_ERROR:
      return "error";
    case v1::JOB_EVENT_LEVEL_WARNING:
      return "warn";
    default:
      return "info";
  }
}

}  // namespace

std::string StatusName(v1::JobStatus status) {
  switch (status) {
    case v1::JOB_STATUS_VALIDATING:
      return "validating_files";
    case v1::JOB_STATUS_QUEUED:
      return "queued";
    case v1::JOB_STATUS_RUNNING:
      return "running";
    case v1::JOB_STATUS_PAUSED:
      return "paused";
    case v1::JOB_STATUS_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATUS_FAILED:
      return "failed";
    case v1::JOB_STATUS_CANCELLED:
      return "cancelled";
    default:
      return "validating_files";
  }
}

Hyperparameters ResolveHyperparameters(const RequestedHyperparameters& requested, int64_t examples) {
  examples = std::max<int64_t>(examples, 1);
  Hyperparameters h;
  if (requested.n_epochs) {
    h.n_epochs = *requested.n_epochs;
  } else if (examples * 3 < 100) {
    h.n_epochs = std::min<int64_t>(25, (100 + examples - 1) / examples);
  } else if (examples * 3 > 25000) {
    h.n_epochs = std::max<int64_t>(1, 25000 / examples);
  } else {
    h.n_epochs = 3;
  }
  h.batch_size = requested.batch_size.value_or(
      std::min<int64_t>({kMaxBatchSize, examples, std::max<int64_t>(1, (examples + 499) / 500)}));
  h.learning_rate_multiplier = requested.learning_rate_multiplier.value_or(1.0);
  return h;
}

FineTuneRequest ParseFineTuneRequest(const std::string& body) {
  const Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object())
    throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");
  static const std::set<std::string> kKnown = {
      "model",  "training_file", "validation_file", "hyperparameters", "method",
      "suffix", "seed",          "metadata",        "integrations"};
  for (const auto& [key, v] : json.items()) {
    if (!kKnown.count(key))
      Invalid(key, fmt::format("unknown parameter '{}' (this server refuses keys it would ignore)", key),
              "unknown_parameter");
  }
  FineTuneRequest r;
  r.model = StringField(json, "model", true);
  r.training_file = StringField(json, "training_file", true);
  r.validation_file = StringField(json, "validation_file", false);
  r.suffix = StringField(json, "suffix", false);
  if (r.suffix.size() > kMaxSuffix || !PlainName(r.suffix))
    Invalid("suffix", fmt::format("'suffix' is at most {} letters, digits, '.', '_' or '-'", kMaxSuffix));
  if (const auto seed = json.find("seed"); seed != json.end() && !seed->is_null()) {
    if (!seed->is_number_integer() || seed->get<int64_t>() < 0 || seed->get<int64_t>() > 2147483647)
      Invalid("seed", "'seed' must be an integer from 0 to 2147483647");
    r.seed = seed->get<int64_t>();
  }
  if (const auto metadata = json.find("metadata"); metadata != json.end()) r.metadata = ParseMetadata(*metadata);
  if (const auto integrations = json.find("integrations");
      integrations != json.end() && !integrations->is_null() && !(integrations->is_array() && integrations->empty()))
    Invalid("integrations", "integrations (wandb, ...) are not supported by this server", "unsupported_parameter");
  const auto legacy = json.find("hyperparameters");
  const auto method = json.find("method");
  const bool has_legacy = legacy != json.end() && !legacy->is_null();
  const bool has_method = method != json.end() && !method->is_null();
  if (has_legacy && has_method)
    Invalid("hyperparameters",
            "give the hyperparameters in method.supervised.hyperparameters or at the top level (deprecated), not both");
  if (has_legacy) r.hyperparameters = ParseHyperparameters(*legacy, "hyperparameters");
  if (has_method) r.hyperparameters = ParseMethod(*method);
  return r;
}

std::string FineTunedModelName(const std::string& base, const std::string& suffix, const std::string& job_id) {
  return fmt::format("ft:{}:{}:{}", base, suffix, job_id);
}

std::optional<FineTunedModelRef> ParseFineTunedModelName(const std::string& name) {
  static const std::regex kName(R"(ft:([A-Za-z0-9._-]+):([A-Za-z0-9._-]*):(job-[0-9a-f]+))");
  std::smatch match;
  if (!std::regex_match(name, match, kName)) return std::nullopt;
  return FineTunedModelRef{match[1], match[2], match[3]};
}

std::string StoredFields(const OpenAiFields& f) {
  return nlohmann::json{{"model", f.model},
                        {"base", f.base},
                        {"suffix", f.suffix},
                        {"training_file", f.training_file},
                        {"validation_file", f.validation_file},
                        {"n_epochs", f.hyperparameters.n_epochs},
                        {"batch_size", f.hyperparameters.batch_size},
                        {"learning_rate_multiplier", f.hyperparameters.learning_rate_multiplier},
                        {"seed", f.seed}}
      .dump();
}

std::optional<OpenAiFields> ParseStoredFields(const std::string& text) {
  if (text.empty()) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  OpenAiFields f;
  f.model = j.value("model", "");
  f.base = j.value("base", "");
  f.suffix = j.value("suffix", "");
  f.training_file = j.value("training_file", "");
  f.validation_file = j.value("validation_file", "");
  f.hyperparameters.n_epochs = j.value("n_epochs", int64_t{1});
  f.hyperparameters.batch_size = j.value("batch_size", int64_t{1});
  f.hyperparameters.learning_rate_multiplier = j.value("learning_rate_multiplier", 1.0);
  f.seed = j.value("seed", int64_t{0});
  return f;
}

std::string SpecName(const std::string& suffix, const std::string& base) {
  std::string name = "ft-";
  for (const char c : suffix.empty() ? base : suffix) {
    const char lower = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const bool plain = (lower >= 'a' && lower <= 'z') || (lower >= '0' && lower <= '9');
    if (plain) name += lower;
    if (!plain && name.back() != '-') name += '-';
  }
  name = name.substr(0, 64);
  while (name.back() == '-') name.pop_back();
  return name;
}

std::string FineTuneSpec(const OpenAiFields& f, const SpecInputs& in) {
  const Hyperparameters& h = f.hyperparameters;
  int64_t micro = 1;  // the largest divisor of the batch up to 8: examples a forward pass holds
  for (int64_t m = 8; m >= 1; --m) {
    if (h.batch_size % m == 0) {
      micro = m;
      break;
    }
  }
  nlohmann::json data = {{"train", "file:" + f.training_file}, {"format", "chat"}};
  if (!f.validation_file.empty()) data["validation"] = "file:" + f.validation_file;
  nlohmann::json training = {{"epochs", h.n_epochs},
                             {"micro_batch_size", micro},
                             {"global_batch_size", h.batch_size},
                             {"optimizer", {{"lr", kBaseLearningRate * h.learning_rate_multiplier}}},
                             {"seed", f.seed}};
  if (!f.validation_file.empty()) training["eval_every"] = in.steps_per_epoch;
  nlohmann::json spec = {
      {"name", in.name},
      {"model", {{"path", in.model_dir}}},
      {"data", data},
      {"training", training},
      {"output", {{"dir", in.output_dir}, {"checkpoint_every", in.steps_per_epoch}, {"keep_checkpoints", 3}}}};
  if (!in.labels.empty()) spec["labels"] = in.labels;
  return spec.dump();
}

Json JobObject(const JobRecord& record) {
  const v1::Job& job = record.job;
  const std::optional<OpenAiFields> stored = ParseStoredFields(record.openai);
  const OpenAiFields f = stored ? *stored : FieldsFromSpec(job.spec_yaml());
  const bool succeeded = job.status() == v1::JOB_STATUS_SUCCEEDED;
  Json metadata;
  for (const auto& [k, v] : job.labels()) metadata[k] = v;
  const Json hyperparameters = HyperparametersObject(f.hyperparameters);
  return {{"object", "fine_tuning.job"},
          {"id", job.id()},
          {"model", f.model},
          {"created_at", api::Ms(job.create_time()) / 1000},
          {"finished_at", SecondsOrNull(api::Ms(job.finish_time()))},
          {"fine_tuned_model", succeeded && stored ? Json(FineTunedModelName(f.base, f.suffix, job.id())) : Json()},
          {"organization_id", job.tenant()},
          {"result_files", Json::array()},
          {"status", StatusName(job.status())},
          {"validation_file", NullIfEmpty(f.validation_file)},
          {"training_file", f.training_file},
          {"hyperparameters", hyperparameters},
          {"trained_tokens", succeeded ? Json(job.trained_tokens()) : Json()},
          {"error", ErrorObject(job)},
          {"seed", f.seed},
          {"estimated_finish",
           job.status() == v1::JOB_STATUS_RUNNING ? SecondsOrNull(api::Ms(job.estimated_finish_time())) : Json()},
          {"integrations", Json::array()},
          {"metadata", metadata},
          {"method", {{"type", "supervised"}, {"supervised", {{"hyperparameters", hyperparameters}}}}},
          {"user_provided_suffix", NullIfEmpty(f.suffix)}};
}

Json EventObject(const v1::JobEvent& event) {
  const bool metrics = event.kind() == v1::JOB_EVENT_KIND_PROGRESS || event.kind() == v1::JOB_EVENT_KIND_METRICS;
  const Json data = EventData(event);
  std::string message = event.message();
  if (metrics) {
    const auto& m = event.job().metrics();
    message = fmt::format("Step {}/{}: training loss={:.4f}", event.job().step(), event.job().total_steps(),
                          m.count("loss") ? m.at("loss") : 0.0);
    if (event.kind() == v1::JOB_EVENT_KIND_METRICS && m.count("val_loss"))
      message += fmt::format(", validation loss={:.4f}", m.at("val_loss"));
  }
  return {{"object", "fine_tuning.job.event"},
          {"id", EventId(event.job_id(), event.seq())},
          {"created_at", api::Ms(event.create_time()) / 1000},
          {"level", EventLevel(event)},
          {"message", message},
          {"type", metrics ? "metrics" : "message"},
          {"data", data}};
}

Json CheckpointObject(const v1::Job& job, const std::string& fine_tuned_model, int64_t step, int64_t time_ms,
                      const std::map<std::string, double>& metrics) {
  Json figures = Json::object();
  for (const auto& [name, value] : CheckpointFigures(step, metrics))
    figures[name] = name == "step" ? Json(step) : Json(value);
  return {{"object", "fine_tuning.job.checkpoint"},
          {"id", CheckpointId(job.id(), step)},
          {"created_at", time_ms / 1000},
          {"fine_tuned_model_checkpoint", fmt::format("{}:ckpt-step-{}", fine_tuned_model, step)},
          {"fine_tuning_job_id", job.id()},
          {"metrics", figures},
          {"step_number", step}};
}

Json FileObject(const v1::File& file) {
  return {{"object", "file"},
          {"id", file.id()},
          {"bytes", file.bytes()},
          {"created_at", api::Ms(file.create_time()) / 1000},
          {"filename", file.filename()},
          {"purpose", file.purpose()},
          {"status", file.status().empty() ? "processed" : file.status()},
          {"status_details", file.status() == "error" ? Json(file.status_details()) : Json()},
          {"expires_at", Json()}};
}

Json ListObject(Json data, bool has_more) {
  return {{"object", "list"}, {"data", std::move(data)}, {"has_more", has_more}};
}

std::string EventId(const std::string& job_id, int64_t seq) { return fmt::format("ftevent-{}-{}", job_id, seq); }

std::string CheckpointId(const std::string& job_id, int64_t step) { return fmt::format("ftckpt-{}-{}", job_id, step); }

namespace {
std::optional<int64_t> NumberAfter(const std::string& prefix, const std::string& id) {
  if (id.size() <= prefix.size() || id.compare(0, prefix.size(), prefix) != 0 || id.size() - prefix.size() > 18)
    return std::nullopt;
  int64_t n = 0;
  for (size_t i = prefix.size(); i < id.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(id[i]))) return std::nullopt;
    n = n * 10 + (id[i] - '0');
  }
  return n;
}
}  // namespace

std::optional<int64_t> EventSeq(const std::string& job_id, const std::string& event_id) {
  return NumberAfter(fmt::format("ftevent-{}-", job_id), event_id);
}

std::optional<int64_t> CheckpointStep(const std::string& job_id, const std::string& checkpoint_id) {
  return NumberAfter(fmt::format("ftckpt-{}-", job_id), checkpoint_id);
}

std::optional<int64_t> ExampleCount(const std::string& status_details) {
  static const std::regex kCount(R"(: (\d{1,15}) examples)");
  std::smatch match;
  if (!std::regex_search(status_details, match, kCount)) return std::nullopt;
  return std::stoll(match[1]);
}

}  // namespace shardtune::server::openai
