// The OpenAI-compatible API's request body (POST /v1/fine_tuning/jobs), as bytes off the wire,
// through what the server does before any file or store is read: ParseFineTuneRequest (a refusal
// is openai::ApiError, 400 with its param), the "auto" rules, the generated job spec and the
// fields kept with the job, which must read back as written. Also the ids a client sends back
// (`model` as an ft: name, `after` as an event or checkpoint id). Anything else escaping is a bug.

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "launcher/server/openai_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace openai = shardtune::server::openai;
  const std::string body(reinterpret_cast<const char*>(data), size);
  (void)openai::ParseFineTunedModelName(body);
  (void)openai::EventSeq("job-01", body);
  (void)openai::CheckpointStep("job-01", body);
  (void)openai::ExampleCount(body);
  openai::FineTuneRequest request;
  try {
    request = openai::ParseFineTuneRequest(body);
  } catch (const openai::ApiError& e) {
    if (e.status() != 400) std::abort();
    return 0;
  }
  openai::OpenAiFields fields;
  fields.model = request.model;
  fields.base = "base";
  fields.suffix = request.suffix;
  fields.training_file = request.training_file;
  fields.validation_file = request.validation_file;
  fields.hyperparameters = openai::ResolveHyperparameters(request.hyperparameters, 1 + static_cast<int64_t>(size));
  fields.seed = request.seed.value_or(0);
  if (fields.hyperparameters.n_epochs < 1 || fields.hyperparameters.batch_size < 1) std::abort();
  const auto back = openai::ParseStoredFields(openai::StoredFields(fields));
  if (!back || back->suffix != fields.suffix || back->seed != fields.seed ||
      back->hyperparameters.batch_size != fields.hyperparameters.batch_size)
    std::abort();
  openai::SpecInputs inputs{openai::SpecName(request.suffix, "base"), "/m", "/o", 1, request.metadata};
  if (nlohmann::json::parse(openai::FineTuneSpec(fields, inputs), nullptr, false).is_discarded()) std::abort();
  if (!openai::ParseFineTunedModelName(openai::FineTunedModelName("base", request.suffix, "job-0a")))
    std::abort();  // every suffix the API accepts makes a name it reads back
  return 0;
}
