#include "launcher/server/bad_request.h"

#include "google/rpc/status.pb.h"

namespace shardtune::server {

namespace {

constexpr char kPositionOpen[] = "(line ";
constexpr char kTopLevel[] = "(top level)";

}  // namespace

google::rpc::BadRequest::FieldViolation FieldViolationOf(const std::string& problem) {
  google::rpc::BadRequest::FieldViolation violation;
  const size_t colon = problem.find(": ");
  if (colon == std::string::npos) {
    violation.set_description(problem);
    return violation;
  }
  std::string head = problem.substr(0, colon);
  const std::string message = problem.substr(colon + 2);
  std::string position;  // "line L, column C"
  if (const size_t open = head.rfind(kPositionOpen); open != std::string::npos && head.back() == ')') {
    position = head.substr(open + 1, head.size() - open - 2);
    head.erase(open);
    while (!head.empty() && head.back() == ' ') head.pop_back();
  }
  if (head != kTopLevel) violation.set_field(head);
  violation.set_description(position.empty() ? message : position + ": " + message);
  return violation;
}

google::rpc::BadRequest BadRequestOf(const std::vector<std::string>& problems) {
  google::rpc::BadRequest bad_request;
  for (const auto& p : problems) *bad_request.add_field_violations() = FieldViolationOf(p);
  return bad_request;
}

grpc::Status StatusWithBadRequest(grpc::StatusCode code, const std::string& message,
                                  const google::rpc::BadRequest& bad_request) {
  google::rpc::Status status;
  status.set_code(static_cast<int>(code));
  status.set_message(message);
  status.add_details()->PackFrom(bad_request);
  return grpc::Status(code, message, status.SerializeAsString());
}

}  // namespace shardtune::server
