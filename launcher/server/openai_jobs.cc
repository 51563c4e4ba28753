// The OpenAI-compatible fine-tuning job routes (docs/openai-api.md, "Jobs"): a request becomes an
// ordinary job spec (openai_json.h's FineTuneSpec) admitted by JobManager::Create, as gRPC's
// CreateJob is, with the OpenAI-only fields kept in JobRecord::openai; the job, its events and
// its checkpoints are read back from the store in OpenAI's shapes.
#include <openssl/rand.h>

#include "common/run_dir.h"
#include "launcher/api_values.h"
#include "launcher/server/openai_routes.h"

namespace shardtune::server::openai {

namespace fs = std::filesystem;

namespace {

// Where a request's model leads: the base model directory, and the catalog name at its root.
struct ResolvedModel {
  std::string dir, base;
};

[[noreturn]] void ModelNotFound(const std::string& model, const std::string& why) {
  throw ApiError(400, fmt::format("model '{}' {}", model, why), "model", "model_not_found");
}

// A catalog name (server.yaml `models:`), or `ft:BASE:SUFFIX:ID`: the final/ of a job of the
// caller's own tenant that succeeded (continued fine-tuning).
ResolvedModel ResolveModel(JobManager& manager, const Caller& caller, const std::string& model) {
  if (model.rfind("ft:", 0) == 0) {
    const auto ref = ParseFineTunedModelName(model);
    if (!ref) ModelNotFound(model, "is not a name this server gives (ft:BASE:SUFFIX:ID)");
    const auto record = manager.store().Get(ref->job_id);
    const auto fields = record ? ParseStoredFields(record->openai) : std::nullopt;
    if (!record || record->job.tenant() != caller.tenant || !fields || fields->base != ref->base ||
        fields->suffix != ref->suffix)
      ModelNotFound(model, "does not exist");
    if (record->job.status() != v1::JOB_STATUS_SUCCEEDED)
      ModelNotFound(model, fmt::format("is not ready: its job is {}", StatusName(record->job.status())));
    const fs::path final_dir = RunDir(record->job.output_dir()).Final();
    if (!fs::is_directory(final_dir)) ModelNotFound(model, "has no final model any more (its output was removed)");
    return {final_dir.string(), fields->base};
  }
  const auto& catalog = manager.config().models;
  if (const auto it = catalog.find(model); it != catalog.end()) return {it->second, model};
  std::string names;
  for (const auto& [name, dir] : catalog) names += (names.empty() ? "" : ", ") + name;
  ModelNotFound(model, fmt::format("is not in this server's catalog ({})", names.empty() ? "empty" : names));
}

// The example count of an uploaded chat file fit for training, named by `param`; else ApiError(400).
int64_t TrainingExamples(JobManager& manager, const Caller& caller, const std::string& id, const std::string& param) {
  const auto file = manager.files().Get(caller.tenant, id);
  if (!file) throw ApiError(400, fmt::format("{}: no file '{}'", param, id), param, "file_not_found");
  if (file->purpose() != kPurposeFineTune)
    throw ApiError(400, fmt::format("{}: file '{}' has purpose '{}', not 'fine-tune'", param, id, file->purpose()),
                   param, "invalid_file_purpose");
  if (file->status() == "error") {
    throw ApiError(
        400,
        fmt::format("{} '{}' ({}) failed its data check:\n{}", param, id, file->filename(), file->status_details()),
        param, "invalid_" + param);
  }
  if (file->status_details().rfind("chat:", 0) != 0) {
    throw ApiError(400,
                   fmt::format("{} '{}' ({}) is not chat data ({}); fine-tuning jobs here train on chat JSONL "
                               "({{\"messages\": [...]}} a line)",
                               param, id, file->filename(), file->status_details()),
                   param, "invalid_" + param);
  }
  return ExampleCount(file->status_details()).value_or(1);
}

int64_t RandomSeed() {
  uint32_t bytes = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&bytes), sizeof bytes) != 1) return 42;
  return bytes & 0x7fffffff;
}

// The job's record (Get has checked that the caller may see it) as OpenAI's job object.
Json JobOf(JobManager& manager, const v1::Job& job) {
  const auto record = manager.store().Get(job.id());
  if (!record) throw ApiError(404, fmt::format("no job '{}'", job.id()), "id", "job_not_found");
  return JobObject(*record);
}

void Create(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  const FineTuneRequest r = ParseFineTuneRequest(request.body);
  const ResolvedModel model = ResolveModel(manager, caller, r.model);
  const int64_t examples = TrainingExamples(manager, caller, r.training_file, "training_file");
  if (!r.validation_file.empty()) TrainingExamples(manager, caller, r.validation_file, "validation_file");
  OpenAiFields fields;
  fields.model = r.model;
  fields.base = model.base;
  fields.suffix = r.suffix;
  fields.training_file = r.training_file;
  fields.validation_file = r.validation_file;
  fields.hyperparameters = ResolveHyperparameters(r.hyperparameters, examples);
  fields.seed = r.seed.value_or(RandomSeed());
  if (fields.hyperparameters.batch_size > examples) {
    throw ApiError(400,
                   fmt::format("batch_size {} exceeds the training file's {} examples (an epoch is floor(examples / "
                               "batch_size) steps)",
                               fields.hyperparameters.batch_size, examples),
                   "hyperparameters.batch_size", "invalid_value");
  }
  SpecInputs inputs;
  inputs.name = SpecName(r.suffix, model.base);
  inputs.model_dir = model.dir;
  inputs.output_dir =
      (manager.config().TenantRoot(caller.tenant) / "fine_tuning" / (inputs.name + "-" + RandomToken().substr(0, 12)))
          .string();
  inputs.steps_per_epoch = examples / fields.hyperparameters.batch_size;
  inputs.labels = r.metadata;
  v1::CreateJobRequest create;
  create.set_spec_yaml(FineTuneSpec(fields, inputs));
  create.set_idempotency_key(request.get_header_value("Idempotency-Key"));
  WriteJson(response, JobOf(manager, manager.Create(caller, create, StoredFields(fields))));
}

// GET /v1/fine_tuning/jobs: newest first; `after` a job id (exact keyset cursor: the jobs created
// after it in time never shift the pages), `limit` (default 20, at most 100), `metadata[K]=V`.
void List(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  JobFilter filter;
  filter.tenant = caller.visible_tenant();
  const int64_t limit = LimitParam(request, 20, 100);
  filter.limit = limit + 1;  // one more tells whether there are more
  for (const auto& [key, value] : request.params) {
    if (key.size() > 10 && key.rfind("metadata[", 0) == 0 && key.back() == ']')
      filter.labels[key.substr(9, key.size() - 10)] = value;
  }
  if (request.has_param("after")) {
    const std::string after = request.get_param_value("after");
    const auto record = manager.store().Get(after);
    if (!record || (!caller.admin && record->job.tenant() != caller.tenant))
      throw ApiError(400, fmt::format("after: no job '{}'", after), "after", "invalid_value");
    filter.after = ListPosition{api::Ms(record->job.create_time()), record->job.id()};
  }
  std::vector<JobRecord> records = manager.store().List(filter);
  const bool has_more = static_cast<int64_t>(records.size()) > limit;
  if (has_more) records.resize(static_cast<size_t>(limit));
  Json data = Json::array();
  for (const JobRecord& record : records) data.push_back(JobObject(record));
  WriteJson(response, ListObject(data, has_more));
}

// GET …/{id}/events: newest first, `after` an event id (older ones), `limit` (default 20, at most 100).
void Events(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  const v1::Job job = manager.Get(caller, request.matches[1]);
  const int64_t limit = LimitParam(request, 20, 100);
  int64_t before = 0;
  if (request.has_param("after")) {
    const auto seq = EventSeq(job.id(), request.get_param_value("after"));
    if (!seq) throw ApiError(400, "after: not an event id of this job", "after", "invalid_value");
    before = std::max<int64_t>(*seq, 1);  // seq 1 is the oldest: nothing is before it
  }
  std::vector<v1::JobEvent> events =
      before == 1 ? std::vector<v1::JobEvent>() : manager.store().EventsNewestFirst(job.id(), before, limit + 1);
  const bool has_more = static_cast<int64_t>(events.size()) > limit;
  if (has_more) events.resize(static_cast<size_t>(limit));
  Json data = Json::array();
  for (const v1::JobEvent& event : events) data.push_back(EventObject(event));
  WriteJson(response, ListObject(data, has_more));
}

// GET …/{id}/checkpoints: newest (highest step) first, `after` a checkpoint id, `limit` (default 10, at most 100).
void Checkpoints(JobManager& manager, const Caller& caller, const httplib::Request& request,
                 httplib::Response& response) {
  const v1::Job job = manager.Get(caller, request.matches[1]);
  const int64_t limit = LimitParam(request, 10, 100);
  std::optional<int64_t> before;
  if (request.has_param("after")) {
    before = CheckpointStep(job.id(), request.get_param_value("after"));
    if (!before) throw ApiError(400, "after: not a checkpoint id of this job", "after", "invalid_value");
  }
  const auto record = manager.store().Get(job.id());
  const auto fields = record ? ParseStoredFields(record->openai) : std::nullopt;
  const std::string model =
      FineTunedModelName(fields ? fields->base : "shardtune", fields ? fields->suffix : "", job.id());
  std::vector<v1::Checkpoint> checkpoints = manager.store().Checkpoints(job.id());
  const auto metrics = manager.store().CheckpointMetrics(job.id());
  std::reverse(checkpoints.begin(), checkpoints.end());
  Json data = Json::array();
  bool has_more = false;
  for (const v1::Checkpoint& c : checkpoints) {
    if (before && c.step() >= *before) continue;
    if (static_cast<int64_t>(data.size()) == limit) {
      has_more = true;
      break;
    }
    const auto figures = metrics.find(c.step());
    data.push_back(CheckpointObject(job, model, c.step(), api::Ms(c.create_time()),
                                    figures == metrics.end() ? std::map<std::string, double>() : figures->second));
  }
  WriteJson(response, ListObject(data, has_more));
}

}  // namespace

void MountJobs(HttpServer& http, JobManager& manager, const ApiKeyTable& keys) {
  using Handler = void (*)(JobManager&, const Caller&, const httplib::Request&, httplib::Response&);
  const auto route = [&](Handler handler) {
    return Route(
        keys, [&manager, handler](const Caller& caller, const httplib::Request& request, httplib::Response& response) {
          handler(manager, caller, request, response);
        });
  };
  http.Post("/v1/fine_tuning/jobs", route(Create));
  http.Get("/v1/fine_tuning/jobs", route(List));
  http.Get("/v1/fine_tuning/jobs/{id}",
           route([](JobManager& m, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
             WriteJson(response, JobOf(m, m.Get(caller, request.matches[1])));
           }));
  http.Post("/v1/fine_tuning/jobs/{id}/cancel", route([](JobManager& m, const Caller& caller,
                                                         const httplib::Request& request, httplib::Response& response) {
              WriteJson(response, JobOf(m, m.Cancel(caller, request.matches[1])));
            }));
  http.Post("/v1/fine_tuning/jobs/{id}/pause", route([](JobManager& m, const Caller& caller,
                                                        const httplib::Request& request, httplib::Response& response) {
              WriteJson(response, JobOf(m, m.Pause(caller, request.matches[1])));
            }));
  http.Post("/v1/fine_tuning/jobs/{id}/resume", route([](JobManager& m, const Caller& caller,
                                                         const httplib::Request& request, httplib::Response& response) {
              WriteJson(response, JobOf(m, m.Resume(caller, request.matches[1], 0)));
            }));
  http.Get("/v1/fine_tuning/jobs/{id}/events", route(Events));
  http.Get("/v1/fine_tuning/jobs/{id}/checkpoints", route(Checkpoints));
}

}  // namespace shardtune::server::openai
