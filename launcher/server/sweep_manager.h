#pragma once
// Sweeps run by the server (sweeps.proto, docs/sweeps.md "Through the server"): the search of
// `shardtune sweep` (launcher/sweep/sweep_search.h), with each trial a job of the sweep's tenant.
//
// A thread advances every running sweep twice a second: it creates the job of each proposed
// trial (JobManager::Create, as the sweep's creator: the tenant's storage roots, quotas and
// priority apply as to any job), records each job's end as its trial's, and proposes trials while
// fewer than parallel_trials run. A sweep ends when every trial has: SUCCEEDED if one reported the
// objective, FAILED if none did.
//
// Evaluations reach the search as they are reported (JobManager's evaluation listener), so that a
// trial early termination stops is stopped at that very step: the worker's reply to its report
// says stop, and its job ends CANCELLED. The thread also reads the jobs' METRICS events, which
// catches what the listener could not see (evaluations reported while the server was down).
//
// What survives a restart: the sweep's row (sweep_store.h), its search journal
// (DATA_DIR/sweeps/ID/trials.jsonl, replayed: the same proposals and decisions follow), and its
// jobs, found again by their idempotency key (sweep/ID/trial/N): a trial whose job was created just
// before a crash is never run twice, and one proposed but not yet created gets its job then.

#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "launcher/server/job_manager.h"
#include "launcher/server/sweep_store.h"
#include "shardtune/v1/sweeps.pb.h"

namespace shardtune::server {

class SweepManager {
 public:
  explicit SweepManager(JobManager& jobs);
  ~SweepManager();
  SweepManager(const SweepManager&) = delete;
  SweepManager& operator=(const SweepManager&) = delete;

  // Resumes the sweeps the store has RUNNING: before the server takes reports, so that an
  // evaluation reported at once after a restart finds its sweep and is judged.
  void Load();
  // Cancels the jobs of sweeps that have ended and starts the thread (after Load and after
  // JobManager::Start). Loads first if Load has not run.
  void Start();
  void Stop();

  // INVALID_ARGUMENT with every problem of the sweep spec and its base job spec (a BadRequest);
  // PERMISSION_DENIED for a viewer or a path outside the tenant's storage; RESOURCE_EXHAUSTED
  // when a trial's ranks could never run.
  v1::Sweep Create(const Caller& caller, const v1::CreateSweepRequest& request);
  v1::Sweep Get(const Caller& caller, const std::string& id);  // NOT_FOUND for another tenant's
  v1::ListSweepsResponse List(const Caller& caller, const v1::ListSweepsRequest& request);
  // Records the running trials as failed, the sweep as CANCELLED, then cancels their jobs.
  // FAILED_PRECONDITION for a sweep that has ended.
  v1::Sweep Cancel(const Caller& caller, const std::string& id);

  // JobManager's evaluation listener: feeds a trial job's evaluation to its sweep's search;
  // whether early termination stops the trial now. False for any other job.
  bool StopAfterEvaluation(const v1::Job& job);

 private:
  struct Run;
  void Loop();
  // Opens a running sweep's search (its journal replayed) and finds its trials' jobs.
  std::unique_ptr<Run> Open(const SweepRecord& record);
  void Advance(Run& run);  // under mutex_
  void CreateTrialJob(Run& run, int64_t trial);
  void FollowTrialJob(Run& run, int64_t trial);
  // At Start: cancels the unfinished jobs of trials whose sweep has ended (a restart between a
  // sweep's end and its jobs' cancels).
  void CancelOrphanedTrialJobs();
  void CancelJob(const Caller& as, const std::string& job_id);  // an ended job is no error
  // Ends the sweep: its row gets the status and the trials, the run is dropped, and the jobs of
  // trials still running are cancelled.
  void Finish(Run& run, v1::SweepStatus status, const std::string& message);
  v1::Sweep ToProto(const Run& run) const;
  std::filesystem::path Journal(const std::string& sweep_id) const;

  JobManager& jobs_;
  SweepStore store_;
  std::mutex mutex_;                                  // guards runs_ and every Run
  std::map<std::string, std::unique_ptr<Run>> runs_;  // the running sweeps, by id
  std::condition_variable wake_;
  bool stopping_ = false;
  int64_t last_created_ms_ = 0;  // of the newest sweep (guarded by mutex_)
  bool loaded_ = false;          // Load has run (guarded by mutex_)
  std::thread thread_;
};

}  // namespace shardtune::server
