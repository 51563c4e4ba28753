#pragma once
// What the gRPC services share (internal to launcher/server/services*.cc): the caller's API key
// ("authorization: Bearer KEY") and what it may do, and the mapping of errors to status codes.

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <map>
#include <string>

#include "launcher/api_values.h"
#include "launcher/server/api_keys.h"
#include "launcher/server/bad_request.h"
#include "launcher/server/job_manager.h"
#include "launcher/server/request_error.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {

using grpc::Status;
using grpc::StatusCode;

inline std::string Bearer(const grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) return "";
  return BearerKey(std::string(it->second.data(), it->second.size()));
}

// Trailing metadata of a refusal that has a JobErrorCode: its full name (JOB_ERROR_CODE_INVALID_SPEC),
// whose short name also opens the status message ("invalid_spec: ...").
inline constexpr char kErrorCodeMetadata[] = "shardtune-error-code";

// The status of a refusal: the code kSurfaces names for its kind; a refused spec's problems as a
// google.rpc.BadRequest in the details.
inline grpc::Status ToStatus(const RequestError& e) {
  const std::string message =
      e.job_error() == v1::JOB_ERROR_CODE_UNSPECIFIED ? e.what() : api::ShortName(e.job_error()) + ": " + e.what();
  const grpc::StatusCode code = SurfacesOf(e.kind()).grpc_code;
  if (!e.spec_problems().empty()) return StatusWithBadRequest(code, message, BadRequestOf(e.spec_problems()));
  return Status(code, message);
}

// Runs `body` and turns what it throws into a status.
template <typename F>
grpc::Status Guard(grpc::ServerContext* context, F&& body) {
  try {
    return body();
  } catch (const RequestError& e) {
    if (e.job_error() != v1::JOB_ERROR_CODE_UNSPECIFIED)
      context->AddTrailingMetadata(kErrorCodeMetadata, v1::JobErrorCode_Name(e.job_error()));
    return ToStatus(e);
  } catch (const std::exception& e) {
    spdlog::error("request failed: {}", e.what());
    return Status(StatusCode::INTERNAL, e.what());
  }
}

// The configured API keys (api_keys.h), for the gRPC services.
class ApiKeys {
 public:
  explicit ApiKeys(const ServerConfig& config) : table_(config) {}

  // Runs `body(caller)` for a known key (UNAUTHENTICATED otherwise), its errors as statuses.
  template <typename F>
  grpc::Status Authenticated(grpc::ServerContext* context, F&& body) const {
    const std::string key = Bearer(context);
    if (key.empty()) return Status(StatusCode::UNAUTHENTICATED, "no API key: send 'authorization: Bearer KEY'");
    const std::optional<Caller> caller = table_.Find(key);
    if (!caller) return Status(StatusCode::UNAUTHENTICATED, "unknown API key");
    return Guard(context, [&] { return body(*caller); });
  }

 private:
  ApiKeyTable table_;
};

}  // namespace shardtune::server
