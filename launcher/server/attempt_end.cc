#include "launcher/server/attempt_end.h"

#include <fmt/format.h>

#include "common/worker_contract.h"

namespace shardtune::server {

static_assert(static_cast<int>(contract::JobErrorKind::kBackend) == v1::JOB_ERROR_CODE_BACKEND &&
                  static_cast<int>(contract::JobErrorKind::kTimeout) == v1::JOB_ERROR_CODE_TIMEOUT &&
                  static_cast<int>(contract::JobErrorKind::kInvalidSpec) == v1::JOB_ERROR_CODE_INVALID_SPEC,
              "contract::JobErrorKind mirrors proto JobErrorCode");

namespace {

// The error an attempt's end means when nothing reported one.
AttemptVerdict ErrorFromExit(const AttemptEnd& end) {
  if (end.outcome == v1::ATTEMPT_OUTCOME_STOPPED)
    return {v1::JOB_STATUS_FAILED, v1::JOB_ERROR_CODE_RANK_FAILED,
            "the attempt stopped before its end without being asked"};
  if (end.exit_code < 0)
    return {v1::JOB_STATUS_FAILED, v1::JOB_ERROR_CODE_RANK_FAILED, "its processes vanished (node lost or killed)"};
  const auto kind = static_cast<v1::JobErrorCode>(contract::JobErrorKindForExit(end.exit_code));
  switch (kind) {
    case v1::JOB_ERROR_CODE_INVALID_INPUT:
      return {v1::JOB_STATUS_FAILED, kind, "the worker rejected the job's input"};
    case v1::JOB_ERROR_CODE_TIMEOUT:
      return {v1::JOB_STATUS_FAILED, kind,
              fmt::format("a collective did not complete within sharding.collective_timeout_s on a rank other than "
                          "0 (exit status {}; the log names it)",
                          end.exit_code)};
    default:
      return {v1::JOB_STATUS_FAILED, v1::JOB_ERROR_CODE_RANK_FAILED,
              fmt::format("mpirun exited with status {}", end.exit_code)};
  }
}

}  // namespace

bool IsUserError(v1::JobErrorCode code) { return contract::IsUserError(static_cast<contract::JobErrorKind>(code)); }

void SetError(v1::Job& job, v1::JobErrorCode code, const std::string& message) {
  job.mutable_error()->set_code(code);
  job.mutable_error()->set_message(message);
}

AttemptVerdict DecideAttempt(const AttemptEnd& end) {
  if (end.cancel_requested) return {v1::JOB_STATUS_CANCELLED, v1::JOB_ERROR_CODE_UNSPECIFIED, "cancelled"};
  if (end.outcome == v1::ATTEMPT_OUTCOME_FINISHED)
    return {v1::JOB_STATUS_SUCCEEDED, v1::JOB_ERROR_CODE_UNSPECIFIED, ""};
  if (end.outcome == v1::ATTEMPT_OUTCOME_PAUSED) return {v1::JOB_STATUS_PAUSED, v1::JOB_ERROR_CODE_UNSPECIFIED, ""};
  if (end.outcome == v1::ATTEMPT_OUTCOME_UNSPECIFIED && end.exit_code == 0) {
    // Ranks exit 0 only at the end of training or at a pause; the report did not reach us.
    if (end.pause_requested && !end.reached_last_step)
      return {v1::JOB_STATUS_PAUSED, v1::JOB_ERROR_CODE_UNSPECIFIED, "exit status 0; no result report"};
    return {v1::JOB_STATUS_SUCCEEDED, v1::JOB_ERROR_CODE_UNSPECIFIED, "exit status 0; no result report"};
  }
  AttemptVerdict verdict = ErrorFromExit(end);
  const v1::JobErrorCode kind = end.error != v1::JOB_ERROR_CODE_UNSPECIFIED ? end.error : verdict.error;
  if (IsUserError(kind)) {
    verdict.status = v1::JOB_STATUS_FAILED;
  } else if (end.pause_requested) {
    verdict.status = v1::JOB_STATUS_PAUSED;
  } else {
    verdict.status = end.attempts_left ? v1::JOB_STATUS_QUEUED : v1::JOB_STATUS_FAILED;
  }
  return verdict;
}

}  // namespace shardtune::server
