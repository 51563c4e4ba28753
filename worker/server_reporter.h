#pragma once
// A job started by shardtune-server reports to it from rank 0 (WorkerService): progress and
// metrics after every step, each checkpoint, and how the attempt ended. The server's reply to a
// progress report can ask the job to stop at a checkpoint (pause). Best effort: a server that
// cannot be reached (restarting, say) costs a warning, never the job. When the server asks for
// heartbeats (SHARDTUNE_HEARTBEAT_INTERVAL_S), a thread of the reporter sends them from its
// creation (before the spec is read or the model loaded) to its destruction, whatever the
// training thread does: only a process that stopped altogether falls silent.

#include <exception>
#include <map>
#include <memory>
#include <string>

#include "common/worker_contract.h"

namespace shardtune {

// How an attempt that did not fail ended on rank 0 (proto AttemptOutcome).
enum class AttemptOutcome {
  kFinished,  // trained to the end (or stopped early by its metric) and wrote final/
  kPaused,    // stopped at a checkpoint because the server asked
  kStopped,   // stopped before the end without being asked (TrainerOptions::stop_after_step)
};

class ServerReporter {
 public:
  // From the job's environment (common/worker_contract.h); nullptr when the job was not
  // started by a server.
  static std::unique_ptr<ServerReporter> FromEnvironment();
  static bool ManagedByServer();  // those variables are set (on every rank)
  ~ServerReporter();

  // Returns whether the server asks the job to stop (checkpoint and exit).
  bool Progress(int64_t step, int64_t total_steps, double epoch, int64_t tokens,
                const std::map<std::string, double>& metrics, const std::string& log_line);
  void Checkpoint(int64_t step, const std::string& path);
  // How the attempt ended. The server decides the job's status from this report (and the
  // attempt's exit status), so it is retried for a few seconds when the server cannot be reached.
  void Result(AttemptOutcome outcome);
  // The attempt failed on this rank with an error of `kind` (the worker's JobErrorKindOf) saying `what`.
  void Failure(contract::JobErrorKind kind, const std::string& what);

 private:
  struct Impl;
  explicit ServerReporter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardtune
