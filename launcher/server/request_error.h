#pragma once

#include <stdexcept>
#include <string>

#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

// Errors a request can get, mapped to gRPC status codes by the services; those with a
// JobErrorCode (a spec refused at admission: INVALID_SPEC) also carry its name.
class RequestError : public std::runtime_error {
 public:
  enum class Kind { kInvalidArgument, kNotFound, kFailedPrecondition, kResourceExhausted, kPermissionDenied };
  RequestError(Kind kind, const std::string& message, v1::JobErrorCode job_error = v1::JOB_ERROR_CODE_UNSPECIFIED)
      : std::runtime_error(message), kind_(kind), job_error_(job_error) {}
  Kind kind() const { return kind_; }
  v1::JobErrorCode job_error() const { return job_error_; }

 private:
  Kind kind_;
  v1::JobErrorCode job_error_;
};

}  // namespace shardtune::server
