#pragma once

#include <grpcpp/support/status_code_enum.h>

#include <array>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

// Errors a request can get, the same on every surface: kSurfaces maps each kind to its gRPC status
// code and its HTTP status (with OpenAI's error type). Those with a JobErrorCode (a spec refused
// at admission: INVALID_SPEC) also carry it; a refused job spec carries its problems, one line
// each ("training.lr (line 12, column 7): ..."), which gRPC sends as a google.rpc.BadRequest.
class RequestError : public std::runtime_error {
 public:
  enum class Kind { kInvalidArgument, kNotFound, kFailedPrecondition, kResourceExhausted, kPermissionDenied };
  RequestError(Kind kind, const std::string& message, v1::JobErrorCode job_error = v1::JOB_ERROR_CODE_UNSPECIFIED,
               std::vector<std::string> spec_problems = {})
      : std::runtime_error(message), kind_(kind), job_error_(job_error), spec_problems_(std::move(spec_problems)) {}
  Kind kind() const { return kind_; }
  v1::JobErrorCode job_error() const { return job_error_; }
  const std::vector<std::string>& spec_problems() const { return spec_problems_; }

 private:
  Kind kind_;
  v1::JobErrorCode job_error_;
  std::vector<std::string> spec_problems_;
};

// How each RequestError::Kind shows on each surface.
struct ErrorSurfaces {
  RequestError::Kind kind;
  grpc::StatusCode grpc_code;
  int http_status;
  const char* openai_type;  // OpenAI's error.type
};
inline constexpr std::array<ErrorSurfaces, 5> kSurfaces = {{
    {RequestError::Kind::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT, 400, "invalid_request_error"},
    {RequestError::Kind::kNotFound, grpc::StatusCode::NOT_FOUND, 404, "invalid_request_error"},
    {RequestError::Kind::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION, 409, "invalid_request_error"},
    {RequestError::Kind::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED, 429, "invalid_request_error"},
    {RequestError::Kind::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED, 403, "invalid_request_error"},
}};

inline const ErrorSurfaces& SurfacesOf(RequestError::Kind kind) {
  for (const auto& s : kSurfaces)
    if (s.kind == kind) return s;
  return kSurfaces[0];  // unreachable: every kind has a row (launcher_test checks)
}

}  // namespace shardtune::server
