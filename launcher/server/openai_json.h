#pragma once
// The OpenAI-compatible fine-tuning API's pure part (docs/openai-api.md): requests parsed into
// what the server needs, with OpenAI's error fields (param, code) for every refusal; the
// "auto" hyperparameter rules; `ft:BASE:SUFFIX:ID` names; and the server's objects (v1::Job with
// its JobRecord::openai fields, events, checkpoints, files) as OpenAI's JSON objects. No I/O: the
// routes (openai_routes.h) read the store and call JobManager.
//
// Thread-safe (no state).

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "launcher/server/job_store.h"
#include "shardtune/v1/files.pb.h"

namespace shardtune::server::openai {

using Json = nlohmann::ordered_json;  // fields in OpenAI's order

// A refused request, as OpenAI words it: {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
      : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_, code_;
};

// validating_files, queued, running, paused, succeeded, failed, cancelled.
std::string StatusName(v1::JobStatus status);

// The learning rate a multiplier of 1 gives (training.optimizer.lr = kBaseLearningRate x multiplier).
constexpr double kBaseLearningRate = 2e-5;

struct Hyperparameters {
  int64_t n_epochs = 1;
  int64_t batch_size = 1;
  double learning_rate_multiplier = 1.0;
};
// As requested: nullopt is "auto" (or not given).
struct RequestedHyperparameters {
  std::optional<int64_t> n_epochs, batch_size;
  std::optional<double> learning_rate_multiplier;
};
// The "auto" rules from the training file's example count `examples` (docs/openai-api.md):
//   n_epochs  3, raised to ceil(100 / examples) (at most 25) for a small file, lowered to
//             floor(25000 / examples) (at least 1) for a large one;
//   batch_size  ceil(examples / 500), within 1..256 (and at most `examples`);
//   learning_rate_multiplier  1.
Hyperparameters ResolveHyperparameters(const RequestedHyperparameters& requested, int64_t examples);

// POST /v1/fine_tuning/jobs's body.
struct FineTuneRequest {
  std::string model, training_file, validation_file, suffix;
  std::optional<int64_t> seed;
  std::map<std::string, std::string> metadata;
  RequestedHyperparameters hyperparameters;
};
// Parses and checks the body: ApiError(400) with `param` naming the field ("training_file",
// "method.type", "hyperparameters.n_epochs", an unknown key) for each refusal.
FineTuneRequest ParseFineTuneRequest(const std::string& body);

// `ft:BASE:SUFFIX:ID` (SUFFIX may be empty).
std::string FineTunedModelName(const std::string& base, const std::string& suffix, const std::string& job_id);
struct FineTunedModelRef {
  std::string base, suffix, job_id;
};
std::optional<FineTunedModelRef> ParseFineTunedModelName(const std::string& name);

// What JobRecord::openai keeps of a job this API created.
struct OpenAiFields {
  std::string model;  // as requested: a catalog name or an ft: name
  std::string base;   // the catalog name at the root of the chain (BASE of the ft: name)
  std::string suffix, training_file, validation_file;
  Hyperparameters hyperparameters;
  int64_t seed = 0;
};
std::string StoredFields(const OpenAiFields& fields);
// nullopt for an empty or unreadable text (a job created over gRPC).
std::optional<OpenAiFields> ParseStoredFields(const std::string& text);

// The job spec (as JSON, which is YAML) of a fine-tuning job: full fine-tuning of `model_dir` on
// chat data from the uploaded files, `steps_per_epoch` steps an epoch (a checkpoint, and an
// evaluation when there is validation data, at each epoch's end; the last 3 kept).
struct SpecInputs {
  std::string name, model_dir, output_dir;
  int64_t steps_per_epoch = 1;
  std::map<std::string, std::string> labels;
};
std::string FineTuneSpec(const OpenAiFields& fields, const SpecInputs& inputs);
// A job spec's name from the suffix or the base model: "ft-" and a-z, 0-9, '-' (job-spec.md's rule).
std::string SpecName(const std::string& suffix, const std::string& base);

// The objects. `record.openai` empty: a job created over gRPC, shown from its spec.
Json JobObject(const JobRecord& record);
Json EventObject(const v1::JobEvent& event);
Json CheckpointObject(const v1::Job& job, const std::string& fine_tuned_model, int64_t step, int64_t time_ms,
                      const std::map<std::string, double>& metrics);
Json FileObject(const v1::File& file);
// {"object": "list", "data": [...], "has_more": ...}
Json ListObject(Json data, bool has_more);

// Event and checkpoint ids, and the step or sequence number back from one (nullopt: not this job's).
std::string EventId(const std::string& job_id, int64_t seq);
std::optional<int64_t> EventSeq(const std::string& job_id, const std::string& event_id);
std::string CheckpointId(const std::string& job_id, int64_t step);
std::optional<int64_t> CheckpointStep(const std::string& job_id, const std::string& checkpoint_id);

// The example count in a fine-tune file's data-check summary ("chat: 16 examples, 910 bytes"); nullopt if none.
std::optional<int64_t> ExampleCount(const std::string& status_details);

}  // namespace shardtune::server::openai
