#include "launcher/server/sweep_manager.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "common/job_spec.h"
#include "launcher/api_values.h"
#include "launcher/server/event_fields.h"
#include "launcher/server/request_error.h"
#include "launcher/sweep/sweep_dir.h"
#include "launcher/sweep/sweep_search.h"
#include "launcher/sweep/sweep_spec.h"
#include "launcher/sweep/trial_job.h"

namespace shardtune::server {

namespace fs = std::filesystem;
using sweep::TrialRecord;
using sweep::TrialStatus;

namespace {

constexpr auto kTick = std::chrono::milliseconds(500);
// Trials refused as jobs one after another: past this, the refusal is the sweep's (a file it names
// deleted, a storage root changed), and the sweep fails rather than spend its budget on it.
constexpr int kMaxRefusedInARow = 3;

// How a running sweep reads its spec: the paths are not checked again (each trial's job is, when
// it is created) and an uploaded file stays named file:ID, so that the trial's job resolves it
// for the tenant and records its use.
SpecOptions TrialSpecOptions() {
  SpecOptions options;
  options.check_files = false;
  options.resolve_file = [](const std::string& id) { return std::optional<std::string>(kUploadedFilePrefix + id); };
  return options;
}

sweep::SweepSpec ParseSweep(const std::string& spec_yaml, const std::string& base_yaml, const SpecOptions& job) {
  sweep::SweepOptions options;
  options.job = job;
  options.base_text = base_yaml;
  try {
    return sweep::ParseSweepSpec(spec_yaml, "spec_yaml", "/", options);
  } catch (const SpecError& e) {
    std::string message = "the sweep spec has problems:";
    for (const auto& p : e.problems()) message += "\n" + p;
    throw RequestError(RequestError::Kind::kInvalidArgument, message, v1::JOB_ERROR_CODE_INVALID_SPEC, e.problems());
  }
}

v1::TrialStatus TrialStatusOf(TrialStatus status) {
  switch (status) {
    case TrialStatus::kRunning:
      return v1::TRIAL_STATUS_RUNNING;
    case TrialStatus::kCompleted:
      return v1::TRIAL_STATUS_COMPLETED;
    case TrialStatus::kStopped:
      return v1::TRIAL_STATUS_STOPPED;
    case TrialStatus::kFailed:
      return v1::TRIAL_STATUS_FAILED;
  }
  return v1::TRIAL_STATUS_UNSPECIFIED;
}

bool IsTerminalSweep(v1::SweepStatus status) { return status != v1::SWEEP_STATUS_RUNNING; }

}  // namespace

// A running sweep: its row, its search and each trial's job.
struct SweepManager::Run {
  struct TrialJob {
    std::string job_id;
    v1::JobStatus status = v1::JOB_STATUS_UNSPECIFIED;
    int64_t events_seen = 0;   // the job's events already read (seq)
    bool stopping = false;     // early termination stopped it
    bool cancel_sent = false;  // this manager asked JobManager to cancel it
    bool settled = false;      // its end is recorded as the trial's
  };

  SweepRecord record;
  Caller caller;  // the sweep's creator: who its trial jobs are created and cancelled as
  sweep::SweepSpec spec;
  std::unique_ptr<sweep::SweepSearch> search;  // reads `spec`: declared after it
  std::map<int64_t, TrialJob> trials;          // by trial number, once its job exists
  int refused_in_a_row = 0;                    // trials whose job CreateJob refused, since the last it took
  std::string last_refusal;

  // Trials with a job still to follow, or without one yet: what counts against parallel_trials.
  int64_t Active() const {
    int64_t active = 0;
    for (const auto& [number, job] : trials) active += job.settled ? 0 : 1;
    for (const int64_t number : search->Running()) active += trials.count(number) ? 0 : 1;
    return active;
  }
};

SweepManager::SweepManager(JobManager& jobs) : jobs_(jobs), store_(jobs.store()) {
  jobs_.SetEvaluationListener([this](const v1::Job& job) { return StopAfterEvaluation(job); });
}

SweepManager::~SweepManager() { Stop(); }

fs::path SweepManager::Journal(const std::string& sweep_id) const {
  return fs::path(jobs_.config().data_dir) / "sweeps" / sweep_id / "trials.jsonl";
}

void SweepManager::Load() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (loaded_) return;
  loaded_ = true;
  last_created_ms_ = store_.MaxCreatedMs();
  for (const SweepRecord& record : store_.Running()) {
    try {
      runs_[record.sweep.id()] = Open(record);
      spdlog::info("sweep {} ({}) resumed: {} trial(s) so far", record.sweep.id(), record.sweep.name(),
                   runs_[record.sweep.id()]->search->state().trials().size());
    } catch (const std::exception& e) {
      SweepRecord failed = record;
      failed.sweep.set_status(v1::SWEEP_STATUS_FAILED);
      failed.sweep.set_message(fmt::format("could not be resumed: {}", e.what()));
      *failed.sweep.mutable_finish_time() = api::TimeOfMs(NowMs());
      store_.Update(failed);
      spdlog::error("sweep {}: {}", record.sweep.id(), failed.sweep.message());
    }
  }
}

void SweepManager::Start() {
  Load();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    CancelOrphanedTrialJobs();
  }
  thread_ = std::thread([this] { Loop(); });
}

void SweepManager::CancelOrphanedTrialJobs() {
  for (const JobRecord& r : jobs_.store().Unfinished()) {
    const auto sweep_id = r.job.labels().find("sweep");
    if (sweep_id == r.job.labels().end() || runs_.count(sweep_id->second)) continue;
    // Only a job the sweep made (its key); a label alone is the job's own to set.
    if (r.idempotency_key.rfind(TrialKeyPrefix(sweep_id->second), 0) != 0) continue;
    const auto sweep = store_.Get(sweep_id->second);
    if (!sweep || sweep->sweep.status() == v1::SWEEP_STATUS_RUNNING) continue;
    spdlog::warn("job {}: a trial of sweep {}, which has ended ({}): cancelled", r.job.id(), sweep_id->second,
                 api::ShortName(sweep->sweep.status()));
    CancelJob(Caller{r.job.tenant(), /*admin=*/true, /*read_only=*/false}, r.job.id());
  }
}

void SweepManager::CancelJob(const Caller& as, const std::string& job_id) {
  try {
    jobs_.Cancel(as, job_id);
  } catch (const std::exception& e) {  // it ended meanwhile (FAILED_PRECONDITION), or the store failed
    spdlog::debug("cancelling job {}: {}", job_id, e.what());
  }
}

void SweepManager::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<SweepManager::Run> SweepManager::Open(const SweepRecord& record) {
  auto run = std::make_unique<Run>();
  run->record = record;
  run->caller.tenant = record.sweep.tenant();
  run->caller.admin = record.admin;
  run->spec = ParseSweep(record.sweep.spec_yaml(), record.sweep.base_job_yaml(), TrialSpecOptions());
  const fs::path journal = Journal(record.sweep.id());
  fs::create_directories(journal.parent_path());
  run->search = std::make_unique<sweep::SweepSearch>(run->spec, journal);
  for (const TrialRecord& t : run->search->state().trials()) {
    const auto job = jobs_.store().FindByIdempotencyKey(run->caller.tenant, TrialKey(record.sweep.id(), t.number));
    if (!job) continue;
    Run::TrialJob& tj = run->trials[t.number];
    tj.job_id = job->job.id();
    tj.status = job->job.status();
    tj.stopping = t.status == TrialStatus::kStopped;
    tj.settled = t.Finished();
    // A trial that ended while its job did not (stopped, or failed by a cancel, just before the
    // restart): the job is cancelled, and a stopped trial followed until its job ends.
    if (t.Finished() && !IsTerminal(tj.status)) {
      CancelJob(run->caller, tj.job_id);
      tj.cancel_sent = true;
      tj.settled = !tj.stopping;
    }
  }
  return run;
}

v1::Sweep SweepManager::Create(const Caller& caller, const v1::CreateSweepRequest& request) {
  RequireWrite(caller);
  if (!request.idempotency_key().empty()) {
    if (const auto existing = store_.FindByIdempotencyKey(caller.tenant, request.idempotency_key()))
      return Get(caller, existing->sweep.id());
  }
  // The checks that read files run without the lock, as CreateJob's do.
  std::set<std::string> uploaded;
  const SpecOptions strict = jobs_.UploadedFilesOf(caller, &uploaded);
  const sweep::SweepSpec checked = ParseSweep(request.spec_yaml(), request.base_job_yaml(), strict);
  const JobSpec base = ParseJobSpec(request.base_job_yaml(), "base_job_yaml", "/", strict);  // CheckBase parsed it
  jobs_.RequireAdmissible(caller, base);  // as CreateJob would admit the trials' jobs

  SweepRecord r;
  v1::Sweep& s = r.sweep;
  s.set_id("sweep-" + RandomToken().substr(0, 16));
  s.set_name(checked.name);
  s.set_tenant(caller.tenant);
  s.set_status(v1::SWEEP_STATUS_RUNNING);
  s.set_spec_yaml(request.spec_yaml());
  s.set_base_job_yaml(request.base_job_yaml());
  s.set_strategy(sweep::ToString(checked.strategy));
  s.set_objective_metric(checked.objective.metric);
  s.set_objective_goal(sweep::ToString(checked.objective.goal));
  s.set_max_trials(checked.max_trials);
  s.set_parallel_trials(checked.parallel_trials);
  s.set_priority(request.priority());
  s.set_output_dir((fs::path(base.output.dir) / s.id()).string());
  r.idempotency_key = request.idempotency_key();
  r.admin = caller.admin;

  std::unique_lock<std::mutex> lock(mutex_);
  if (!request.idempotency_key().empty()) {  // the same request, created by another call meanwhile
    if (const auto existing = store_.FindByIdempotencyKey(caller.tenant, request.idempotency_key())) {
      lock.unlock();
      return Get(caller, existing->sweep.id());
    }
  }
  // Strictly increasing, as jobs' are: a sweep created while a client pages is never behind its cursor.
  last_created_ms_ = std::max(NowMs(), last_created_ms_ + 1);
  *s.mutable_create_time() = api::TimeOfMs(last_created_ms_);
  std::unique_ptr<Run> run = Open(r);  // its journal, before the row that makes it known
  store_.Insert(r);
  const v1::Sweep created = ToProto(*run);
  runs_[s.id()] = std::move(run);
  wake_.notify_all();
  spdlog::info("sweep {} ({}) accepted for tenant {}: {} {} trial(s), {} at once", s.id(), s.name(), s.tenant(),
               s.strategy(), s.max_trials(), s.parallel_trials());
  return created;
}

v1::Sweep SweepManager::Get(const Caller& caller, const std::string& id) {
  // Another tenant's sweep does not exist for this caller.
  auto visible = [&](const v1::Sweep& s) { return caller.admin || s.tenant() == caller.tenant; };
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (const auto run = runs_.find(id); run != runs_.end() && visible(run->second->record.sweep))
      return ToProto(*run->second);
  }
  // Not running here: its row (an ended sweep's has its trials; a sweep that ended since the
  // look above has its final row by now).
  const auto record = store_.Get(id);
  if (!record || !visible(record->sweep))
    throw RequestError(RequestError::Kind::kNotFound, fmt::format("no sweep '{}'", id));
  return record->sweep;
}

v1::ListSweepsResponse SweepManager::List(const Caller& caller, const v1::ListSweepsRequest& request) {
  const int64_t page_size = request.page_size() > 0 ? std::min(request.page_size(), 500) : 50;
  SweepStore::Page page = store_.List(caller.visible_tenant(), request.status(), page_size, request.page_token());
  v1::ListSweepsResponse response;
  std::lock_guard<std::mutex> lock(mutex_);
  for (v1::Sweep& s : page.sweeps) {
    if (const auto run = runs_.find(s.id()); run != runs_.end()) {
      s = ToProto(*run->second);
    } else if (s.status() == v1::SWEEP_STATUS_RUNNING) {  // it ended since its row was read
      if (const auto row = store_.Get(s.id())) s = row->sweep;
    }
    s.clear_trials();
    *response.add_sweeps() = std::move(s);
  }
  response.set_next_page_token(page.next_page_token);
  return response;
}

v1::Sweep SweepManager::Cancel(const Caller& caller, const std::string& id) {
  RequireWrite(caller);
  Get(caller, id);  // NOT_FOUND for another tenant's
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = runs_.find(id);
  if (it == runs_.end()) {
    const auto record = store_.Get(id);
    if (record->sweep.status() == v1::SWEEP_STATUS_RUNNING) {
      throw RequestError(RequestError::Kind::kFailedPrecondition,
                         fmt::format("sweep {} is not loaded yet (the server is starting); try again", id));
    }
    throw RequestError(RequestError::Kind::kFailedPrecondition,
                       fmt::format("sweep {} has ended ({})", id, api::ShortName(record->sweep.status())));
  }
  Run& run = *it->second;
  for (const int64_t number : run.search->Running())
    run.search->Finished(number, TrialStatus::kFailed, run.search->state().trial(number).steps,
                         "the sweep was cancelled");
  // The journal, then the row, then the jobs (Finish): a restart after the row finds the jobs of
  // a sweep that has ended and cancels them (CancelOrphanedTrialJobs); one between the journal and
  // the row cancels the jobs of the trials recorded as failed (Open) and the sweep goes on, the
  // cancel not acknowledged.
  Finish(run, v1::SWEEP_STATUS_CANCELLED, fmt::format("cancelled by tenant {}", caller.tenant));
  return store_.Get(id)->sweep;
}

bool SweepManager::StopAfterEvaluation(const v1::Job& job) {
  const auto sweep_id = job.labels().find("sweep");
  const auto trial_label = job.labels().find("trial");
  if (sweep_id == job.labels().end() || trial_label == job.labels().end()) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto run = runs_.find(sweep_id->second);
  if (run == runs_.end()) return false;
  Run& r = *run->second;
  // Labels are the job's own to set: only the job the sweep made for the trial counts.
  const auto trial = std::find_if(r.trials.begin(), r.trials.end(),
                                  [&](const auto& entry) { return entry.second.job_id == job.id(); });
  if (trial == r.trials.end() || trial_label->second != sweep::SweepDir::TrialName(trial->first)) return false;
  const auto value = job.metrics().find(r.spec.objective.metric);
  if (value == job.metrics().end() || trial->second.stopping) return false;
  sweep::StopDecision decision;
  try {
    decision = r.search->Evaluated(trial->first, job.step(), value->second);
  } catch (const std::exception& e) {  // the journal cannot be written: the sweep's loop fails the sweep
    spdlog::error("sweep {}: {}", r.record.sweep.id(), e.what());
    return false;
  }
  if (!decision.stop) return false;
  trial->second.stopping = true;
  trial->second.cancel_sent = true;  // the reply to this report stops it, and JobManager cancels it
  spdlog::info("sweep {}: trial {} stopped at step {}: {}", r.record.sweep.id(), trial_label->second, job.step(),
               decision.reason);
  return true;
}

void SweepManager::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    std::vector<Run*> runs;
    for (auto& [id, run] : runs_) runs.push_back(run.get());
    for (Run* run : runs) {
      const std::string id = run->record.sweep.id();
      try {
        Advance(*run);
      } catch (const std::exception& e) {
        spdlog::error("sweep {}: {}", id, e.what());
        try {
          Finish(*run, v1::SWEEP_STATUS_FAILED, e.what());
        } catch (const std::exception& again) {  // the store refuses: tried again after a restart
          spdlog::error("sweep {}: {}", id, again.what());
          runs_.erase(id);
        }
      }
    }
    wake_.wait_for(lock, kTick, [this] { return stopping_; });
  }
}

void SweepManager::Advance(Run& run) {
  sweep::SweepSearch& search = *run.search;
  for (const int64_t number : search.Running())
    if (!run.trials.count(number)) CreateTrialJob(run, number);
  for (auto& [number, job] : run.trials)
    if (!job.settled) FollowTrialJob(run, number);
  while (run.Active() < run.spec.parallel_trials && run.refused_in_a_row < kMaxRefusedInARow) {
    const auto proposal = search.Propose();
    if (!proposal) break;
    CreateTrialJob(run, proposal->trial);
  }
  if (run.refused_in_a_row >= kMaxRefusedInARow) {
    Finish(run, v1::SWEEP_STATUS_FAILED,
           fmt::format("{} trials in a row were refused as jobs; the last: {}", kMaxRefusedInARow, run.last_refusal));
    return;  // `run` is gone
  }
  if (search.Done() && run.Active() == 0) {
    const bool any = search.state().Best().has_value();
    Finish(run, any ? v1::SWEEP_STATUS_SUCCEEDED : v1::SWEEP_STATUS_FAILED,
           any ? "" : "every trial failed (each trial's note says why)");
  }
}

void SweepManager::CreateTrialJob(Run& run, int64_t trial) {
  const std::string& id = run.record.sweep.id();
  const std::string name = sweep::SweepDir::TrialName(trial);
  const TrialRecord& record = run.search->state().trial(trial);
  sweep::TrialSettings settings;
  for (size_t i = 0; i < run.spec.parameters.size(); ++i)
    settings.values[run.spec.parameters[i].path] = record.values[i];
  settings.values["labels.sweep"] = id;
  settings.values["labels.trial"] = name;
  settings.name = fmt::format("{}-{}", run.spec.name, name);
  settings.output_dir = (fs::path(run.record.sweep.output_dir()) / name).string();
  v1::CreateJobRequest request;
  request.set_idempotency_key(TrialKey(id, trial));
  request.set_priority(run.record.sweep.priority());
  try {
    request.set_spec_yaml(
        sweep::MakeTrialJob(run.spec.base_yaml, "/", settings, "trial " + name, TrialSpecOptions()).yaml);
    const v1::Job job = jobs_.Create(run.caller, request);
    Run::TrialJob& tj = run.trials[trial];
    tj.job_id = job.id();
    tj.status = job.status();
    run.refused_in_a_row = 0;
    spdlog::info("sweep {}: trial {} is job {} ({})", id, name, job.id(),
                 sweep::ValuesText(run.spec.parameters, record.values));
  } catch (const SpecError& e) {
    run.last_refusal = fmt::format("invalid job: {}", fmt::join(e.problems(), "; "));
    ++run.refused_in_a_row;
    run.search->Finished(trial, TrialStatus::kFailed, 0, run.last_refusal);
  } catch (const RequestError& e) {  // refused as a job: the sweep goes on without it
    run.last_refusal = fmt::format("its job was refused: {}", e.what());
    ++run.refused_in_a_row;
    run.search->Finished(trial, TrialStatus::kFailed, 0, run.last_refusal);
  } catch (const Error& e) {  // the store failed: the trial has no job yet, and the next pass tries again
    spdlog::warn("sweep {}: trial {}: its job could not be created now: {}", id, name, e.what());
  }
}

void SweepManager::FollowTrialJob(Run& run, int64_t trial) {
  Run::TrialJob& tj = run.trials.at(trial);
  // The job before its events: when it has ended, the events read next include its last.
  const auto job = jobs_.store().Get(tj.job_id);
  if (!job) {
    tj.settled = true;
    run.search->Finished(trial, TrialStatus::kFailed, 0, fmt::format("its job {} is gone", tj.job_id));
    return;
  }
  const std::string& metric = run.spec.objective.metric;
  for (const v1::JobEvent& event : jobs_.store().Events(tj.job_id, tj.events_seen, 1000)) {
    tj.events_seen = event.seq();
    if (event.kind() != v1::JOB_EVENT_KIND_METRICS) continue;
    const auto value = event.job().metrics().find(metric);
    if (value == event.job().metrics().end()) continue;
    const sweep::StopDecision decision = run.search->Evaluated(trial, event.job().step(), value->second);
    if (decision.stop && !tj.stopping) {
      tj.stopping = true;
      spdlog::info("sweep {}: trial {} stopped: {}", run.record.sweep.id(), trial, decision.reason);
    }
  }
  tj.status = job->job.status();
  // A stopped trial whose job goes on: the listener's stop did not reach it (an evaluation read
  // here, or the reply went to an attempt that had been replaced).
  if (tj.stopping && !IsTerminal(tj.status) && !job->cancel_requested && !tj.cancel_sent) {
    CancelJob(run.caller, tj.job_id);
    tj.cancel_sent = true;
  }
  if (!IsTerminal(tj.status)) return;
  // Events past the batch read (a job with more than 1000 new ones): the next tick reads them first.
  if (!jobs_.store().Events(tj.job_id, tj.events_seen, 1).empty()) return;
  tj.settled = true;
  const int64_t steps = job->job.step();
  if (tj.stopping) {  // however its job ended: its evaluations up to the stop count
    run.search->Finished(trial, TrialStatus::kStopped, steps);
    return;
  }
  switch (tj.status) {
    case v1::JOB_STATUS_SUCCEEDED:
      run.search->Finished(trial, TrialStatus::kCompleted, steps);
      break;
    case v1::JOB_STATUS_CANCELLED:
      run.search->Finished(trial, TrialStatus::kFailed, steps, "its job was cancelled");
      break;
    default:
      run.search->Finished(
          trial, TrialStatus::kFailed, steps,
          fmt::format("its job failed: {}: {}", api::ShortName(job->job.error().code()), job->job.error().message()));
  }
}

void SweepManager::Finish(Run& run, v1::SweepStatus status, const std::string& message) {
  const std::string id = run.record.sweep.id();
  std::vector<std::string> unfinished;  // jobs of trials it no longer follows
  for (const auto& [number, tj] : run.trials)
    if (!tj.settled && !IsTerminal(tj.status)) unfinished.push_back(tj.job_id);
  const Caller as = run.caller;
  run.record.sweep = ToProto(run);
  run.record.sweep.set_status(status);
  run.record.sweep.set_message(message);
  *run.record.sweep.mutable_finish_time() = api::TimeOfMs(NowMs());
  store_.Update(run.record);
  spdlog::info("sweep {} ({}): {}{}", id, run.record.sweep.name(), api::ShortName(status),
               message.empty() ? "" : ": " + message);
  runs_.erase(id);  // `run` is gone
  for (const std::string& job_id : unfinished) CancelJob(as, job_id);
}

v1::Sweep SweepManager::ToProto(const Run& run) const {
  v1::Sweep s = run.record.sweep;
  s.clear_trials();
  const sweep::SweepState& state = run.search->state();
  int64_t finished = 0;
  for (const TrialRecord& t : state.trials()) {
    v1::Trial* trial = s.add_trials();
    trial->set_number(t.number);
    trial->set_status(TrialStatusOf(t.status));
    *trial->mutable_values() = ToStruct(nlohmann::ordered_json(sweep::ValuesToJson(run.spec.parameters, t.values)));
    if (t.objective) trial->set_objective(*t.objective);
    trial->set_steps(t.steps);
    trial->set_note(t.note);
    if (const auto job = run.trials.find(t.number); job != run.trials.end()) {
      trial->set_job_id(job->second.job_id);
      trial->set_job_status(job->second.status);
    }
    finished += t.Finished() ? 1 : 0;
  }
  s.set_trials_finished(finished);
  if (const auto best = state.Best()) {
    s.set_best_trial(*best);
    if (const auto job = run.trials.find(*best); job != run.trials.end()) s.set_best_job_id(job->second.job_id);
  }
  return s;
}

}  // namespace shardtune::server
