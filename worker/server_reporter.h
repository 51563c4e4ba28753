#pragma once
// A job started by shardtune-server reports to it from rank 0 (WorkerService): progress and
// metrics after every step, each checkpoint, and how the attempt ended. The server's reply to a
// progress report can ask the job to stop at a checkpoint (pause). Best effort: a server that
// cannot be reached (restarting, say) costs a warning, never the job.

#include <map>
#include <memory>
#include <string>

namespace shardtune {

class ServerReporter {
 public:
  // From SHARDTUNE_SERVER, SHARDTUNE_JOB_ID, SHARDTUNE_JOB_TOKEN and SHARDTUNE_JOB_ATTEMPT;
  // nullptr when the job was not started by a server.
  static std::unique_ptr<ServerReporter> FromEnvironment();
  static bool ManagedByServer();  // those variables are set (on every rank)
  ~ServerReporter();

  // Returns whether the server asks the job to stop (checkpoint and exit).
  bool Progress(int64_t step, int64_t total_steps, double epoch, int64_t tokens,
                const std::map<std::string, double>& metrics, const std::string& log_line);
  void Checkpoint(int64_t step, const std::string& path);
  void Result(bool succeeded, bool paused, const std::string& error_code, const std::string& message);

 private:
  struct Impl;
  explicit ServerReporter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardtune
