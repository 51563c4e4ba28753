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
#include "common/worker_contract.h"
#include "launcher/sweep/sweep_dir.h"
#include "launcher/sweep/sweep_search.h"
#include "launcher/sweep/sweep_spec.h"
#include "launcher/sweep/trial_job.h"
#include "launcher/sweep/trial_slots.h"

namespace shardtune {

namespace {

namespace fs = std::filesystem;
using sweep::SweepSearch;
using sweep::SweepSpec;
using sweep::TrialRecord;
using sweep::TrialStatus;

volatile std::sig_atomic_t g_interrupted = 0;
void OnSignal(int) { g_interrupted = 1; }

std::string TrialName(int64_t trial) { return sweep::SweepDir::TrialName(trial); }

// A trial's child process and how far its metrics.jsonl has been read.
struct RunningTrial {
  pid_t pid = -1;
  fs::path run_dir;
  fs::path gate;  // where its rank 0 waits for the verdict on each evaluation
  std::streamoff offset = 0;
  int64_t last_step = 0;   // the highest training step metrics.jsonl has shown
  bool stopping = false;   // early termination asked it to stop
  int64_t stop_step = 0;   // at this step's evaluation
  bool signalled = false;  // SIGTERM sent: it trained past the stop (its rank 0 did not wait)
};

class SweepRunner {
 public:
  SweepRunner(const SweepSpec& spec, const SweepCommandOptions& options)
      : spec_(spec), options_(options), dir_(spec.dir), search_(spec, dir_.Trials()) {
    tty_ = ::isatty(STDOUT_FILENO) == 1;
    const int slots = options.slots > 0 ? options.slots : sweep::AvailableCores();
    slots_ = sweep::PlanTrialSlots(spec.parallel_trials, slots, options.launch.ranks);
    spdlog::info("{} trial(s) at once ({} slots{}, {} rank(s) per trial, parallel_trials {}), {} thread(s) per rank",
                 slots_.at_once, slots, options.slots > 0 ? " (--slots)" : ": this machine's cores",
                 options.launch.ranks, spec.parallel_trials, slots_.threads_per_rank);
  }

  int Run() {
    const std::vector<int64_t> interrupted = search_.Running();
    std::deque<int64_t> rerun(interrupted.begin(), interrupted.end());
    if (!rerun.empty()) spdlog::info("resuming {}: {} trial(s) to run again", dir_.path().string(), rerun.size());
    while (true) {
      if (g_interrupted) return Interrupt();
      while (static_cast<int>(running_.size()) < slots_.at_once) {
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
      // A trial's rank 0 waits for the verdict on each evaluation: this is how long, at most.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    changed_ = true;
    Show();
    const auto best = search_.state().Best();
    if (!best) {
      spdlog::error("every trial of sweep {} failed (their logs: {})", spec_.name, dir_.TrialsDir().string());
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
    const fs::path run_dir = dir_.TrialRun(trial);
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
    const fs::path spec_path = dir_.TrialSpec(trial);
    const fs::path log_path = dir_.TrialLog(trial);
    const fs::path gate = dir_.TrialGate(trial);
    WriteFileAtomic(spec_path, job.yaml);
    fs::remove_all(gate);  // verdicts of an interrupted run of it
    fs::create_directories(gate);
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
      // Each rank's share of the slots (the worker's intra-op threads; mpirun passes it on to the
      // ranks it starts here). A value the user set wins.
      ::setenv("OMP_NUM_THREADS", std::to_string(slots_.threads_per_rank).c_str(), /*overwrite=*/0);
      ::setenv(std::string(contract::kEnvEvaluationGate).c_str(), gate.c_str(), /*overwrite=*/1);
      ::_exit(LaunchTraining(spec_path.string(), options_.launch));
    }
    ::setpgid(pid, pid);  // also here: whichever runs first, the group exists before a kill
    RunningTrial started;
    started.pid = pid;
    started.run_dir = run_dir;
    started.gate = gate;
    running_[trial] = started;
    spdlog::info("trial {} started ({}; log {})", TrialName(trial), ValuesText(record), log_path.string());
    changed_ = true;
  }

  // Feeds the evaluations the trial wrote since the last read to the search, and answers each
  // (its rank 0 waits for the verdict: a trial early termination stops stops at that step). A
  // trial that trains past a stop anyway (its rank 0 on another host, where the gate directory
  // is not) gets SIGTERM.
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
      if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) continue;
      const int64_t step = record["step"].get<int64_t>();
      run.last_step = std::max(run.last_step, step);
      if (run.stopping && step > run.stop_step && !run.signalled) {
        ::kill(-run.pid, SIGTERM);
        run.signalled = true;
      }
      if (!record.contains("val_loss")) continue;  // not an evaluation
      const auto metric = record.find(spec_.objective.metric);
      if (metric != record.end() && metric->is_number()) {
        const sweep::StopDecision decision = search_.Evaluated(trial, step, metric->get<double>());
        changed_ = true;
        if (decision.stop && !run.stopping) {
          spdlog::info("trial {} stopped at step {}: {}", TrialName(trial), step, decision.reason);
          run.stopping = true;
          run.stop_step = step;
        }
      }
      WriteFileAtomic(run.gate / contract::VerdictFileName(step), run.stopping ? "stop\n" : "continue\n");
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
      // The steps it trained: a trial goes on between its last evaluation and the stop reaching it.
      const int64_t steps = std::max(search_.state().trial(trial).steps, it->second.last_step);
      if (it->second.stopping) {
        search_.Finished(trial, TrialStatus::kStopped, steps);
      } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        search_.Finished(trial, TrialStatus::kCompleted, steps);
      } else {
        const std::string why = WIFEXITED(status) ? fmt::format("exit code {}", WEXITSTATUS(status))
                                                  : fmt::format("killed by signal {}", WTERMSIG(status));
        spdlog::error("trial {} failed ({}); its log: {}", TrialName(trial), why, dir_.TrialLog(trial).string());
        search_.Finished(trial, TrialStatus::kFailed, steps, why);
      }
      std::error_code ignored;
      fs::remove_all(it->second.gate, ignored);
      running_.erase(it);
      UpdateBestLink();
      changed_ = true;
    }
  }

  // SWEEP_DIR/best -> trials/NNN/final of the best trial that has one (replaced atomically).
  void UpdateBestLink() {
    std::optional<int64_t> best;
    for (const TrialRecord& t : search_.state().trials()) {
      if (!t.Finished() || !t.objective || !RunDir(dir_.TrialRun(t.number)).HasFinal()) continue;
      if (!best || spec_.objective.Better(*t.objective, *search_.state().trial(*best).objective)) best = t.number;
    }
    if (!best) return;
    const fs::path link = dir_.Best(), temp = link.string() + ".tmp";
    std::error_code ignored;
    fs::remove(temp, ignored);
    fs::create_directory_symlink(sweep::SweepDir::BestTarget(*best), temp);
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

  std::string ValuesText(const TrialRecord& t) const { return sweep::ValuesText(spec_.parameters, t.values); }

  // On a terminal: the whole table, redrawn when something changed. Elsewhere the log lines say it.
  void Show() {
    if (!changed_ || !tty_) return;
    changed_ = false;
    std::string out = "\033[H\033[2J";
    out += fmt::format("sweep {} ({}, {} of {} trials, {})\n", spec_.name, ToString(spec_.strategy),
                       search_.state().trials().size(), spec_.max_trials, dir_.path().string());
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
  sweep::SweepDir dir_;
  SweepSearch search_;
  std::map<int64_t, RunningTrial> running_;
  sweep::TrialSlots slots_;
  bool tty_ = false;
  bool changed_ = true;
};

}  // namespace

int RunSweepCommand(const SweepCommandOptions& options) {
  SweepSpec spec;
  try {
    spec = sweep::LoadSweepSpec(options.sweep_path);
    fs::create_directories(sweep::SweepDir(spec.dir).TrialsDir());
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
