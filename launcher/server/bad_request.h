#pragma once
// A refused job spec's problems as a google.rpc.BadRequest, which a gRPC client reads from the
// status details (the `grpc-status-details-bin` trailer, a google.rpc.Status) to point at the bad
// fields. A problem line is what the spec reader writes (common/job_spec_reader.cc,
// SpecProblem::ToString): "KEY (line L, column C): MESSAGE", "KEY: MESSAGE", or for the text as a
// whole "(line L, column C): MESSAGE" and "(top level): MESSAGE". Its violation: field KEY (""
// for the whole spec), description "line L, column C: MESSAGE" (or MESSAGE where it has no
// position). launcher_test feeds it the reader's own output, so that the two cannot drift apart.

#include <grpcpp/support/status.h>

#include <string>
#include <vector>

#include "google/rpc/error_details.pb.h"

namespace shardtune::server {

google::rpc::BadRequest::FieldViolation FieldViolationOf(const std::string& problem);
google::rpc::BadRequest BadRequestOf(const std::vector<std::string>& problems);

// A status `code` with `message` whose details (a google.rpc.Status with the same code and
// message) carry `bad_request`.
grpc::Status StatusWithBadRequest(grpc::StatusCode code, const std::string& message,
                                  const google::rpc::BadRequest& bad_request);

}  // namespace shardtune::server
