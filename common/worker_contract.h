#pragma once
// The contract between shardtune-server and the ranks of a job it starts, in one place that
// both sides include (LibTorch-free, proto-free). The server passes the job's identity to every
// rank in environment variables (mpirun -x NAME, or the batch script's environment under Slurm);
// rank 0 reports back over WorkerService (proto/shardtune/v1/jobs.proto), whose enums
// (JobErrorCode, AttemptOutcome) carry how an attempt ended. The exit statuses both sides read
// are in common/exit_codes.h.

#include <array>
#include <map>
#include <string>
#include <string_view>

#include "common/error.h"
#include "common/exit_codes.h"

namespace shardtune::contract {

// host:port of the server's WorkerService.
inline constexpr std::string_view kEnvServer = "SHARDTUNE_SERVER";
// The job's id ("job-..."): reports name it.
inline constexpr std::string_view kEnvJobId = "SHARDTUNE_JOB_ID";
// The attempt's bearer token; the server keeps only its SHA-256.
inline constexpr std::string_view kEnvJobToken = "SHARDTUNE_JOB_TOKEN";
// The attempt number (1, 2, ...): the server ignores reports of an attempt other than the current one.
inline constexpr std::string_view kEnvJobAttempt = "SHARDTUNE_JOB_ATTEMPT";

// Seconds between rank 0's heartbeats (WorkerService.Heartbeat), sent from a thread of their own
// from before the spec is read until the attempt ends; "0" or unset: none. The server sets it to
// a quarter of its heartbeat_timeout_s, so that a few lost heartbeats do not kill a live attempt.
inline constexpr std::string_view kEnvHeartbeatInterval = "SHARDTUNE_HEARTBEAT_INTERVAL_S";

// Every variable above: what a launcher must pass on to each rank.
inline constexpr std::array<std::string_view, 5> kJobEnvironment = {kEnvServer, kEnvJobId, kEnvJobToken, kEnvJobAttempt,
                                                                    kEnvHeartbeatInterval};

// Set by `shardtune sweep` for a trial: a directory in which, after each evaluation at step S
// during training, rank 0 waits for the runner's verdict on it (early termination), the file
// VerdictFileName(S) holding "stop" or "continue", written whole (renamed into place). A trial
// stopped there checkpoints and stops at step S itself, as a paused job does. Unset: no wait.
inline constexpr std::string_view kEnvEvaluationGate = "SHARDTUNE_EVALUATION_GATE";
inline std::string VerdictFileName(int64_t step) { return "verdict-" + std::to_string(step); }

// Set by the server for a sweep's trial: seconds rank 0 keeps trying to deliver a progress report
// that carries an evaluation (val_loss) before it trains on without the server's answer. The
// verdict on an evaluation (early termination) must not be lost to a server that is restarting;
// every other report is sent once, and training goes on whatever becomes of it. Unset or "0": once.
inline constexpr std::string_view kEnvEvaluationWait = "SHARDTUNE_EVALUATION_WAIT_S";
inline constexpr double kTrialEvaluationWaitS = 300;

// The interval the server asks for, given its heartbeat_timeout_s (0: heartbeats off).
inline double HeartbeatIntervalFor(double heartbeat_timeout_s) { return heartbeat_timeout_s / 4; }

// The storage sandbox (common/storage_roots.h): the directories the job's tenant was granted,
// realpaths joined by ':', which every path of the spec must still lie in when the worker opens
// it. Set only when the server has `storage:`; the worker re-checks its spec when
// kEnvWriteRoots is set. Read and write roots; read-only ones; tenant-writable ones (hard links refused).
inline constexpr std::string_view kEnvWriteRoots = "SHARDTUNE_WRITE_ROOTS";
inline constexpr std::string_view kEnvReadRoots = "SHARDTUNE_READ_ROOTS";
inline constexpr std::string_view kEnvTenantRoots = "SHARDTUNE_TENANT_ROOTS";
inline constexpr std::array<std::string_view, 3> kStorageEnvironment = {kEnvWriteRoots, kEnvReadRoots, kEnvTenantRoots};

// One attempt's values of those variables, by name (the launcher sets them from this table).
inline std::map<std::string, std::string> JobEnvironmentValues(const std::string& server, const std::string& job_id,
                                                               const std::string& token, int attempt,
                                                               double heartbeat_interval_s = 0) {
  const std::array<std::string, 5> values = {server, job_id, token, std::to_string(attempt),
                                             std::to_string(heartbeat_interval_s)};
  std::map<std::string, std::string> environment;
  for (size_t i = 0; i < kJobEnvironment.size(); ++i) environment[std::string(kJobEnvironment[i])] = values[i];
  return environment;
}

// How an attempt failed: proto JobErrorCode's values under C++ names (the server and the worker
// static_assert that they agree), so that this LibTorch-free, proto-free header can hold the one
// mapping from an error to its code that both sides use.
enum class JobErrorKind {
  kUnspecified = 0,
  kInvalidSpec = 1,   // the spec asks for what the model, data or build cannot do
  kInvalidData = 2,   // the data check found problems
  kInvalidInput = 3,  // a file the spec names is missing or malformed
  kRankFailed = 4,
  kTimeout = 5,  // a collective did not complete within sharding.collective_timeout_s
  kNodeLost = 6,
  kBackend = 7,
};

// Errors of the user's making, which a retry would only repeat: failed at once.
constexpr bool IsUserError(JobErrorKind kind) {
  return kind == JobErrorKind::kInvalidSpec || kind == JobErrorKind::kInvalidData ||
         kind == JobErrorKind::kInvalidInput;
}

// What a shardtune Error of `code` means for the job.
constexpr JobErrorKind JobErrorKindFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument:     // a setting the model or data cannot honour
    case ErrorCode::kFailedPrecondition:  // e.g. output.dir holds a finished run, a resume mismatch
    case ErrorCode::kUnimplemented:       // a setting this build does not support
      return JobErrorKind::kInvalidSpec;
    case ErrorCode::kNotFound:  // a file the spec names
    case ErrorCode::kDataLoss:
      return JobErrorKind::kInvalidInput;
    case ErrorCode::kIo:
    case ErrorCode::kInternal:
      break;
  }
  return JobErrorKind::kRankFailed;
}

// The exit status a rank ends with after an error of `kind` (common/exit_codes.h), and what the
// server reads from an attempt's exit status when no rank reported (rank 0 is the only reporter,
// and another rank's MPI_Abort can end it first).
constexpr int ExitCodeFor(JobErrorKind kind) {
  if (IsUserError(kind)) return kExitInvalidInput;
  return kind == JobErrorKind::kTimeout ? kExitTimeout : kExitFailed;
}
constexpr JobErrorKind JobErrorKindForExit(int exit_code) {
  if (exit_code == kExitInvalidInput) return JobErrorKind::kInvalidInput;
  return exit_code == kExitTimeout ? JobErrorKind::kTimeout : JobErrorKind::kRankFailed;
}

}  // namespace shardtune::contract
