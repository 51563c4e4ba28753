#pragma once
// How the server settles an attempt that has ended: a pure function of what it knows then (the
// requests it had, rank 0's result report, the attempt's exit status), so that every rule of it
// sits in one table-tested place (tests/unit/launcher_test.cc). Never the output directory's
// contents: the worker's report and the exit status decide.

#include <string>

#include "shardtune/v1/jobs.pb.h"

namespace shardtune::server {

struct AttemptEnd {
  bool cancel_requested = false;
  bool pause_requested = false;
  // Rank 0's result report; ATTEMPT_OUTCOME_UNSPECIFIED when none arrived (lost, or rank 0 was
  // ended by another rank's abort).
  v1::AttemptOutcome outcome = v1::ATTEMPT_OUTCOME_UNSPECIFIED;
  v1::JobErrorCode error = v1::JOB_ERROR_CODE_UNSPECIFIED;  // the job's error so far (a report's, NODE_LOST, ...)
  int exit_code = 0;                                        // mpirun's or the batch script's; -1: unknown
  bool reached_last_step = false;                           // progress reported the run's last step
  bool attempts_left = false;                               // retry.max_attempts not yet reached
};

struct AttemptVerdict {
  v1::JobStatus status = v1::JOB_STATUS_FAILED;
  // The error to record when the job has none yet (JOB_ERROR_CODE_UNSPECIFIED: none), and why.
  v1::JobErrorCode error = v1::JOB_ERROR_CODE_UNSPECIFIED;
  std::string why;
};

// Cancelled when asked; SUCCEEDED when rank 0 reported the end, or without a report when the
// ranks exited 0 after the last step; PAUSED when rank 0 reported a pause, or a pause had been
// asked for and the attempt ended otherwise than by a user error (a failure while pausing leaves
// the job paused; resume retries it); a user error (INVALID_SPEC/DATA/INPUT, or exit status 2)
// FAILED at once; any other end QUEUED again while attempts are left, else FAILED. The error
// comes from the report, else from the exit status (kExitTimeout: TIMEOUT; kExitInvalidInput:
// INVALID_INPUT; anything else, or a stop nobody asked for: RANK_FAILED).
AttemptVerdict DecideAttempt(const AttemptEnd& end);

// Errors of the user's making, which a retry would only repeat (common/worker_contract.h's rule).
bool IsUserError(v1::JobErrorCode code);
// Sets the job's error: the code, its name in the `code` string older clients read, the message.
void SetError(v1::Job& job, v1::JobErrorCode code, const std::string& message);

}  // namespace shardtune::server
