#pragma once
// The OpenAI-compatible fine-tuning API under /v1 (docs/openai-api.md), mounted on the `http:`
// listener: the files (openai_files.cc) and the fine-tuning jobs with their events and
// checkpoints (openai_jobs.cc), over the same JobManager, stores and API keys as gRPC. The
// mappings themselves are in openai_json.h.

#include <httplib.h>

#include <cstdint>
#include <string>

#include "launcher/server/api_keys.h"
#include "launcher/server/http_server.h"
#include "launcher/server/job_manager.h"
#include "launcher/server/openai_json.h"

namespace shardtune::server {

// The largest request body the `http:` listener reads: a POST /v1/files upload (the gRPC upload
// streams larger files).
constexpr size_t kMaxHttpBodyBytes = size_t{512} << 20;

// Mounts every /v1 route on `http`. `manager` and `keys` must outlive it.
void MountOpenAi(HttpServer& http, JobManager& manager, const ApiKeyTable& keys);

namespace openai {

void MountFiles(HttpServer& http, JobManager& manager, const ApiKeyTable& keys);
void MountJobs(HttpServer& http, JobManager& manager, const ApiKeyTable& keys);

// A route that needs an API key (WithCaller: 401 invalid_api_key without one) and answers an
// ApiError in OpenAI's shape; RequestError and other exceptions reach HttpServer's handling.
HttpServer::Handler Route(const ApiKeyTable& keys, HttpServer::CallerHandler handler);
void WriteJson(httplib::Response& response, const Json& body);
// The `limit` query parameter: `fallback` when absent; ApiError(400, param "limit") unless 1..`most`.
int64_t LimitParam(const httplib::Request& request, int64_t fallback, int64_t most);

}  // namespace openai

}  // namespace shardtune::server
