#include "launcher/sweep_command.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include "common/atomic_file.h"
#include "common/exit_codes.h"
#include "common/run_dir.h"
#include "launcher/sweep/sweep_search.h"
#include "launcher/sweep/sweep_spec.h"
#include "launcher/sweep/trial_job.h"

namespace shardtune {

namespace {

namespace fs = std::filesystem;
using sweep::SweepSearch;
using sweep::SweepSpec;
using sweep::TrialRecord;
using sweep::TrialStatus;

volatile std::sig_atomic_t g_interrupted = 0;
void OnSignal(int) { g_interrupted = 1; }

std::string TrialName(int64_t trial) { return fmt::format("{:03d}", trial); }

// A trial's child process and how far its metrics.jsonl has been read.
struct RunningTrial {
  pid_t pid = -1;
  fs::path run_dir;
  std::streamoff offset = 0;
  bool stopping = false;  // early termination asked it to stop
};

class SweepRunner {
 public:
  SweepRunner(const SweepSpec& spec, const SweepCommandOptions& options)
      : spec_(spec), options_(options), dir_(spec.dir), search_(spec, fs::path(spec.dir) / "trials.jsonl") {
    tty_ = ::isatty(STDOUT_FILENO) == 1;
  }

  int Run() {
    const std::vector<int64_t> interrupted = search_.Running();
    std::deque<int64_t> rerun(interrupted.begin(), interrupted.end());
    if (!rerun.empty()) spdlog::info("resuming {}: {} trial(s) to run again", dir_.string(), rerun.size());
    while (true) {
      if (g_interrupted) return Interrupt();
      while (static_cast<int64_t>(running_.size()) < spec_.parallel_trials) {
        if (!rerun.empty()) {
          Start(rerun.front());
          rerun.pop_front();
        } else if (const auto proposal = search_.Propose()) {
          Start(proposal->trial);
        } else {
          break;
        }
      }
      if (running_.empty()) break;
      for (auto& [trial, run] : running_) ReadMetrics(trial, run);
      Reap();
      Show();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    changed_ = true;
    Show();
    const auto best = search_.state().Best();
    if (!best) {
      spdlog::error("every trial of sweep {} failed (their logs: {})", spec_.name, (dir_ / "trials").string());
      return kExitFailed;
    }
    const TrialRecord& t = search_.state().trial(*best);
    std::cout << fmt::format("best: trial {} with {} {} ({})\n", TrialName(*best), spec_.objective.metric, *t.objective,
                             ValuesText(t))
              << std::flush;
    return kExitOk;
  }

 private:
  // Writes the trial's job spec and starts `shardtune train` on it in a process group of its own
  // (so that a stop reaches mpirun and every rank); a spec the job refuses fails the trial.
  void Start(int64_t trial) {
    const TrialRecord& record = search_.state().trial(trial);
    const fs::path run_dir = dir_ / "trials" / TrialName(trial);
    sweep::TrialSettings settings;
    for (size_t i = 0; i < spec_.parameters.size(); ++i) settings.values[spec_.parameters[i].path] = record.values[i];
    settings.name = fmt::format("{}-{}", spec_.name, TrialName(trial));
    settings.output_dir = run_dir.string();
    sweep::TrialJob job;
    try {
      job = sweep::MakeTrialJob(spec_.base_yaml, fs::path(spec_.base).parent_path(), settings,
                                fmt::format("trial {}", TrialName(trial)));
    } catch (const SpecError& e) {
      spdlog::error("trial {}: {}", TrialName(trial), e.what());
      search_.Finished(trial, TrialStatus::kFailed, 0, fmt::format("invalid job: {}", fmt::join(e.problems(), "; ")));
      changed_ = true;
      return;
    }
    const fs::path spec_path = dir_ / "trials" / (TrialName(trial) + ".yaml");
    const fs::path log_path = dir_ / "trials" / (TrialName(trial) + ".log");
    WriteFileAtomic(spec_path, job.yaml);
    const pid_t pid = ::fork();
    if (pid < 0) FailErrno("fork", spec_path.string());
    if (pid == 0) {
      ::setpgid(0, 0);
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      ::_exit(LaunchTraining(spec_path.string(), options_.launch));
    }
    ::setpgid(pid, pid);  // also here: whichever runs first, the group exists before a kill
    running_[trial] = RunningTrial{pid, run_dir, 0, false};
    spdlog::info("trial {} started ({}; log {})", TrialName(trial), ValuesText(record), log_path.string());
    changed_ = true;
  }

  // Feeds the evaluations the trial wrote since the last read to the search; stops the trial
  // when early termination says so.
  void ReadMetrics(int64_t trial, RunningTrial& run) {
    const fs::path path = RunDir(run.run_dir).Metrics();
    std::ifstream in(path, std::ios::binary);
    if (!in) return;
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    // A resumed run drops the lines past its checkpoint: read from the start (repeated
    // evaluations are ignored by the search).
    if (size < run.offset) run.offset = 0;
    in.seekg(run.offset);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no newline yet: a line still being written
      run.offset += static_cast<std::streamoff>(line.size()) + 1;
      nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!record.is_object() || !record.contains("step")) continue;
      const auto metric = record.find(spec_.objective.metric);
      if (metric == record.end() || !metric->is_number()) continue;
      const sweep::StopDecision decision =
          search_.Evaluated(trial, record["step"].get<int64_t>(), metric->get<double>());
      changed_ = true;
      if (decision.stop && !run.stopping) {
        spdlog::info("trial {} stopped: {}", TrialName(trial), decision.reason);
        ::kill(-run.pid, SIGTERM);
        run.stopping = true;
      }
    }
  }

  void Reap() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& r) { return r.second.pid == pid; });
      if (it == running_.end()) continue;
      const int64_t trial = it->first;
      ReadMetrics(trial, it->second);
      const int64_t steps = search_.state().trial(trial).steps;
      if (it->second.stopping) {
        search_.Finished(trial, TrialStatus::kStopped, steps);
      } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        search_.Finished(trial, TrialStatus::kCompleted, steps);
      } else {
        const std::string why = WIFEXITED(status) ? fmt::format("exit code {}", WEXITSTATUS(status))
                                                  : fmt::format("killed by signal {}", WTERMSIG(status));
        spdlog::error("trial {} failed ({}); its log: {}", TrialName(trial), why,
                      (dir_ / "trials" / (TrialName(trial) + ".log")).string());
        search_.Finished(trial, TrialStatus::kFailed, steps, why);
      }
      running_.erase(it);
      UpdateBestLink();
      changed_ = true;
    }
  }

  // SWEEP_DIR/best -> trials/NNN/final of the best trial that has one (replaced atomically).
  void UpdateBestLink() {
    std::optional<int64_t> best;
    for (const TrialRecord& t : search_.state().trials()) {
      if (!t.Finished() || !t.objective || !RunDir(dir_ / "trials" / TrialName(t.number)).HasFinal()) continue;
      if (!best || spec_.objective.Better(*t.objective, *search_.state().trial(*best).objective)) best = t.number;
    }
    if (!best) return;
    const fs::path link = dir_ / "best", temp = dir_ / "best.tmp";
    std::error_code ignored;
    fs::remove(temp, ignored);
    fs::create_directory_symlink(fs::path("trials") / TrialName(*best) / "final", temp);
    fs::rename(temp, link);
  }

  int Interrupt() {
    for (auto& [trial, run] : running_) ::kill(-run.pid, SIGTERM);
    for (auto& [trial, run] : running_) ::waitpid(run.pid, nullptr, 0);
    spdlog::warn(
        "sweep {} interrupted; {} running trial(s) will run again (from their checkpoints) when the same "
        "command is run again",
        spec_.name, running_.size());
    return 130;
  }

  // "path=value, ...": doubles to 4 significant digits (trials.jsonl has them exactly).
  std::string ValuesText(const TrialRecord& t) const {
    std::string text;
    for (size_t i = 0; i < spec_.parameters.size(); ++i) {
      const nlohmann::json& v = t.values[i];
      text += fmt::format("{}{}={}", i ? ", " : "", spec_.parameters[i].path,
                          v.is_number_float() ? fmt::format("{:.4g}", v.get<double>()) : v.dump());
    }
    return text;
  }

  // On a terminal: the whole table, redrawn when something changed. Elsewhere the log lines say it.
  void Show() {
    if (!changed_ || !tty_) return;
    changed_ = false;
    std::string out = "\033[H\033[2J";
    out += fmt::format("sweep {} ({}, {} of {} trials, {})\n", spec_.name, ToString(spec_.strategy),
                       search_.state().trials().size(), spec_.max_trials, dir_.string());
    out +=
        fmt::format("{:>5}  {:<10} {:>7}  {:>12}  {}\n", "trial", "status", "steps", spec_.objective.metric, "values");
    const auto best = search_.state().Best();
    for (const TrialRecord& t : search_.state().trials()) {
      out += fmt::format("{:>5}  {:<10} {:>7}  {:>12}  {}{}\n", TrialName(t.number), ToString(t.status), t.steps,
                         t.objective ? fmt::format("{:.6g}", *t.objective) : "-", ValuesText(t),
                         best && *best == t.number ? "  <- best" : "");
    }
    std::cout << out << std::flush;
  }

  const SweepSpec& spec_;
  const SweepCommandOptions& options_;
  fs::path dir_;
  SweepSearch search_;
  std::map<int64_t, RunningTrial> running_;
  bool tty_ = false;
  bool changed_ = true;
};

}  // namespace

int RunSweepCommand(const SweepCommandOptions& options) {
  SweepSpec spec;
  try {
    spec = sweep::LoadSweepSpec(options.sweep_path);
    fs::create_directories(fs::path(spec.dir) / "trials");
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    SweepRunner runner(spec, options);
    return runner.Run();
  } catch (const SpecError& e) {
    spdlog::error("{}", e.what());
    return kExitInvalidInput;
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return e.code() == ErrorCode::kInternal || e.code() == ErrorCode::kIo ? kExitFailed : kExitInvalidInput;
  }
}

}  // namespace shardtune
