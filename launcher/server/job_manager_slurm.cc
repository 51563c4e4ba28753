#include <spdlog/spdlog.h>

#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launcher/server/attempt_end.h"
#include "launcher/server/job_manager.h"
#include "launcher/server/slurm_script.h"

// The Slurm backend of JobManager (job_manager.h): each attempt a batch script submitted with
// sbatch, followed with squeue, all of it called without the manager's lock (SlurmCalls).

namespace shardtune::server {

namespace fs = std::filesystem;

void JobManager::CancelUnrecordedSlurmJobs() {
  // A server that died while sbatch ran never recorded the Slurm job it made: find such jobs by
  // their name (shardtune-JOB_ID) among the jobs it would launch again, and cancel them.
  for (const JobRecord& r : store_->Unfinished()) {
    if (r.job.status() != v1::JOB_STATUS_QUEUED || r.job.attempt() == 0) continue;
    const CommandResult q = RunCommand({"squeue", "--noheader", "--name=shardtune-" + r.job.id(), "--format=%i"});
    std::istringstream ids(q.status == 0 ? q.output : "");
    for (std::string id; ids >> id;) {
      spdlog::info("job {}: cancelling Slurm job {}, submitted before the server stopped and never recorded",
                   r.job.id(), id);
      RunCommand({"scancel", id});
    }
  }
}

void JobManager::PrepareSlurm(JobRecord& r, const RankCommand& ranks, const std::map<std::string, std::string>& env,
                              SlurmCalls& slurm) {
  // The job's environment reaches the batch script through sbatch's default --export=ALL. The
  // files the batch job writes (its log, its exit file) are made here, the job user's, in a
  // directory only the server writes (CreateForJobUser): the server reads them back as root.
  SlurmAttempt attempt;
  attempt.job_id = r.job.id();
  attempt.ranks = r.requested_ranks;
  try {
    SpecOptions options;
    options.check_files = false;  // the worker checks them, as the job's user
    attempt.resources = ParseJobSpec(r.job.spec_yaml(), "spec_yaml", "/", options).resources;
  } catch (const Error& e) {  // admitted with it: not expected, but never submitted half-read
    SetError(r.job, v1::JOB_ERROR_CODE_INVALID_SPEC, e.what());
    return SetStatus(r, v1::JOB_STATUS_FAILED, e.what());
  }
  attempt.mpirun = config_.mpirun;
  attempt.worker = ranks.worker;
  attempt.environment = ranks.environment;
  attempt.script_path = AttemptFile(r, ".sbatch").string();
  attempt.log_path = AttemptFile(r, ".log").string();
  attempt.exit_file = r.exit_file;
  attempt.umask = job_user_.umask;
  attempt.run_as = job_user_.name;
  attempt.run_as_gid = job_user_.gid;
  SlurmBatchJob batch = RenderSlurmBatchJob(config_.slurm, ReadFile(config_.slurm.template_path), attempt);
  WriteFileAtomic(attempt.script_path, batch.script);
  CreateForJobUser(attempt.log_path, job_user_);
  CreateForJobUser(attempt.exit_file, job_user_);
  ShareWithJobUser(fs::path(attempt.script_path).parent_path(), {ranks.worker.at(1)});
  SlurmSubmission submission;
  submission.job_id = r.job.id();
  submission.attempt = r.job.attempt();
  submission.generation = ++submissions_;
  submission.env = env;
  submission.argv = std::move(batch.sbatch_argv);
  // Stored before sbatch runs (the job stays QUEUED, its slots taken): a rank that starts at once
  // must find its attempt and token.
  store_->Update(r);
  submitting_[r.job.id()] = submission.generation;
  slurm.submissions.push_back(std::move(submission));
}

void JobManager::MakeSlurmCalls(SlurmCalls& slurm) {
  for (const std::vector<std::string>& command : slurm.commands) RunCommand(command);
  for (SlurmSubmission& s : slurm.submissions) s.result = RunCommand(s.argv, s.env);
  if (slurm.polls.empty()) return;
  std::vector<std::string> backend_ids;
  for (const SlurmPoll& poll : slurm.polls) backend_ids.push_back(poll.backend_id);
  const std::map<std::string, std::string> states = SlurmStates(backend_ids);
  for (SlurmPoll& poll : slurm.polls) {
    if (const auto state = states.find(poll.backend_id); state != states.end()) poll.state = state->second;
    if (!poll.state) poll.end_state = SlurmEndState(poll.backend_id);
  }
}

void JobManager::ApplySlurmResults(SlurmCalls& slurm) {
  // Each result applies to the job only if it is still the attempt it was made for, and the same
  // launch of it (a Pause or Cancel while sbatch ran forgets the launch; a Resume makes another).
  for (const SlurmSubmission& s : slurm.submissions) {
    const auto launch = submitting_.find(s.job_id);
    const bool current = launch != submitting_.end() && launch->second == s.generation;
    if (current) submitting_.erase(launch);
    const std::string id = s.result.output.substr(0, s.result.output.find_first_of(";\n"));
    const bool submitted =
        s.result.status == 0 && !id.empty() && id.find_first_not_of("0123456789") == std::string::npos;
    auto r = store_->Get(s.job_id);
    if (!current || !r || r->job.status() != v1::JOB_STATUS_QUEUED || r->job.attempt() != s.attempt) {
      if (submitted) slurm_commands_.push_back({"scancel", id});  // cancelled or paused meanwhile
      continue;
    }
    if (!submitted) {
      SetError(r->job, v1::JOB_ERROR_CODE_BACKEND, "sbatch failed: " + s.result.output);
      SetStatus(*r, v1::JOB_STATUS_FAILED, r->job.error().message() + " (not retried: sbatch would refuse it again)");
      continue;
    }
    r->backend_id = id;
    r->supervisor_pid = 0;
    SetStatus(*r, v1::JOB_STATUS_RUNNING,
              fmt::format("attempt {} on {} ranks: Slurm job {}", r->job.attempt(), r->requested_ranks, id));
  }
  for (const SlurmPoll& poll : slurm.polls) {
    auto r = store_->Get(poll.job_id);
    if (!r || r->job.status() != v1::JOB_STATUS_RUNNING || r->job.attempt() != poll.attempt ||
        r->backend_id != poll.backend_id)
      continue;
    SettleIfSlurmEnded(*r, poll);
  }
}

void JobManager::SettleIfSlurmEnded(JobRecord& r, const SlurmPoll& poll) {
  static const std::set<std::string> kRunning = {"PENDING",   "CONFIGURING",  "RUNNING",     "COMPLETING",
                                                 "REQUEUED",  "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                                                 "SUSPENDED", "SIGNALING",    "STAGE_OUT",   "UNKNOWN"};
  if (poll.state && kRunning.count(*poll.state)) {
    // Preempted and requeued jobs run the batch script again and resume from their checkpoint.
    if (GracePeriodOver(r)) slurm_commands_.push_back({"scancel", "--signal=KILL", "--full", r.backend_id});
    return;
  }
  // Ended: the batch script's exit file tells how; Slurm's state why, when it ended the job.
  const std::string& state = poll.state.value_or(poll.end_state);
  if (state == "NODE_FAIL" || state == "BOOT_FAIL") {
    if (!IsUserError(r.job.error().code()))
      SetError(r.job, v1::JOB_ERROR_CODE_NODE_LOST,
               fmt::format("Slurm job {} ended {}: a node of it failed", r.backend_id, state));
  } else if (state == "TIMEOUT" || state == "DEADLINE") {
    if (r.job.error().message().empty())
      SetError(r.job, v1::JOB_ERROR_CODE_TIMEOUT,
               fmt::format("Slurm job {} ended {}: it reached its time limit", r.backend_id, state));
  }
  Settle(r, ReadExitFile(r.exit_file).value_or(-1));
}

std::map<std::string, std::string> JobManager::SlurmStates(const std::vector<std::string>& backend_ids) {
  // squeue lists a job while it is pending, running or requeued, and for a while after it ends;
  // one call for every job. When squeue fails (other than for a job id it no longer knows), every
  // job is UNKNOWN, which counts as still running: the next poll tries again.
  std::string list;
  for (const std::string& id : backend_ids) list += (list.empty() ? "" : ",") + id;
  const CommandResult q = RunCommand({"squeue", "--noheader", "--jobs=" + list, "--format=%i %T"});
  std::map<std::string, std::string> states;
  if (q.status != 0 && q.output.find("Invalid job id") == std::string::npos) {
    for (const std::string& id : backend_ids) states[id] = "UNKNOWN";
    return states;
  }
  if (q.status != 0) return states;  // the one job asked for is no longer known
  std::istringstream lines(q.output);
  for (std::string id, state; lines >> id >> state;) states[id] = state;
  return states;
}

std::string JobManager::SlurmEndState(const std::string& backend_id) {
  // squeue leaves out a job that ended (COMPLETED, FAILED, NODE_FAIL, ...); scontrol still shows
  // it for MinJobAge (300 s by default). Empty when neither knows it.
  const CommandResult q = RunCommand({"scontrol", "show", "job", "--oneliner", backend_id});
  const size_t at = q.output.find("JobState=");
  if (q.status != 0 || at == std::string::npos) return "";
  const size_t begin = at + std::string("JobState=").size();
  return q.output.substr(begin, q.output.find_first_of(" \n", begin) - begin);
}

}  // namespace shardtune::server
