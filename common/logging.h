#pragma once
// Logging for every executable: spdlog's default logger, one line per event, to stderr and (once
// the output directory is known) to a log file there. Use spdlog::info(...) etc. directly after
// InitLogging.
//
// Two formats (--log-format): text, each line prefixed with its time, the process's rank and the
// level; json, one object per line (for log shippers):
//   {"time":"2026-12-02T15:38:50.123Z","level":"info","rank":0,"job":"job-1a2b...","message":"..."}
// time in UTC with milliseconds; rank only in a process that is a rank (the worker); job where
// known (SetLogJob for the whole process, LogJobScope for the lines of one thread's scope).

#include <filesystem>
#include <string>
#include <vector>

namespace shardtune {

enum class LogFormat { kText, kJson };

// "text" or "json"; anything else throws Error naming --log-format.
LogFormat ParseLogFormat(const std::string& name);

// The rank under mpirun (OMPI_COMM_WORLD_RANK, PMI_RANK) or srun (SLURM_PROCID); 0 otherwise.
int RankFromEnvironment();

// `level` is one of trace, debug, info, warn, error, critical, off; others throw Error naming it.
// `rank` < 0: a process that is no rank (the server, the CLI): text lines say rank 0, json lines
// have no rank.
void InitLogging(const std::string& level, int rank, LogFormat format = LogFormat::kText);

// The format InitLogging chose, and the arguments that pass it on to a shardtune-worker this
// process starts ({} for text, the default).
LogFormat CurrentLogFormat();
std::vector<std::string> LogFormatArgs();

// Also writes every later line to `path` (appending, so a resumed job keeps its earlier log).
void AddLogFile(const std::filesystem::path& path);

// The job every later line of this process is about (json's "job"); "" for none.
void SetLogJob(const std::string& job);

// The job the lines logged by this thread are about while the scope lasts (over SetLogJob's).
class LogJobScope {
 public:
  explicit LogJobScope(std::string job);
  ~LogJobScope();
  LogJobScope(const LogJobScope&) = delete;
  LogJobScope& operator=(const LogJobScope&) = delete;

 private:
  std::string previous_;
};

}  // namespace shardtune
