// What rank 0 of a running attempt reports over WorkerService (docs/server.md, "Reports"): its
// progress and evaluations (with a sweep's early-termination verdict in the reply), its
// checkpoints, and how the attempt ended.
#include <fmt/format.h>

#include "launcher/api_values.h"
#include "launcher/server/attempt_end.h"
#include "launcher/server/job_manager.h"
#include "launcher/server/server_config.h"

namespace shardtune::server {

bool JobManager::WorkerTokenValid(const std::string& job_id, const std::string& token) {
  const auto r = store_->Get(job_id);
  return r && !r->worker_token_hash.empty() && Sha256Hex(token) == r->worker_token_hash;
}

bool JobManager::Progress(const v1::ProgressReport& report) {
  v1::Job evaluated;  // the job after an evaluation, for the listener
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto r = store_->Get(report.job_id());
    if (!r || r->job.attempt() != report.attempt()) return true;  // a stale attempt: stop it
    v1::Job& job = r->job;
    job.set_step(report.step());
    job.set_total_steps(report.total_steps());
    job.set_epoch(report.epoch());
    job.set_trained_tokens(report.trained_tokens());
    job.set_progress(report.total_steps() > 0 ? static_cast<double>(report.step()) / report.total_steps() : 0.0);
    for (const auto& [k, v] : report.metrics()) (*job.mutable_metrics())[k] = v;
    if (job.has_start_time() && report.step() > 0 && report.total_steps() > 0) {
      // From this attempt's pace; a rough figure by design.
      const double per_step =
          static_cast<double>(NowMs() - api::Ms(job.start_time())) / static_cast<double>(report.step());
      *job.mutable_estimated_finish_time() =
          api::TimeOfMs(NowMs() + static_cast<int64_t>(per_step * (report.total_steps() - report.step())));
    }
    store_->Update(*r);
    const bool evaluation = report.metrics().count("val_loss") > 0;
    Event(
        *r, evaluation ? v1::JOB_EVENT_KIND_METRICS : v1::JOB_EVENT_KIND_PROGRESS,
        report.log_line().empty() ? fmt::format("step {}/{}", report.step(), report.total_steps()) : report.log_line());
    if (r->pause_requested || r->cancel_requested) return true;
    if (!evaluation || !evaluation_listener_) return false;
    evaluated = job;
  }
  // Without the lock: the listener takes its own, and calls into this manager under it.
  if (!evaluation_listener_(evaluated)) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r || r->job.attempt() != report.attempt() || IsTerminal(r->job.status())) return true;
  // The reply stops the ranks at this step; the attempt's end is then CANCELLED (attempt_end.h),
  // and a worker that does not stop is killed after cancel_grace_s like any cancelled job.
  r->cancel_requested = true;
  r->signal_sent_ms = NowMs();
  store_->Update(*r);
  Event(*r, v1::JOB_EVENT_KIND_NOTE,
        fmt::format("stopped at step {} by its sweep's early termination (cancel requested)", report.step()));
  return true;
}

void JobManager::CheckpointSaved(const v1::CheckpointReport& report) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r) return;
  store_->AddCheckpoint(report.job_id(), report.step(), report.path(),
                        {r->job.metrics().begin(), r->job.metrics().end()});
  Event(*r, v1::JOB_EVENT_KIND_CHECKPOINT, fmt::format("checkpoint at step {}: {}", report.step(), report.path()));
}

void JobManager::Result(const v1::ResultReport& report) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto r = store_->Get(report.job_id());
  if (!r || r->job.attempt() != report.attempt()) return;
  if (r->result_succeeded) return;  // a later run of the same attempt (a Slurm requeue) changes nothing
  const v1::AttemptOutcome outcome = report.outcome();
  r->result_reported = true;
  r->result_succeeded = outcome == v1::ATTEMPT_OUTCOME_FINISHED;
  r->result_paused = outcome == v1::ATTEMPT_OUTCOME_PAUSED;
  const bool has_error = report.has_error() && !report.error().message().empty();
  // A host mpirun lost explains what the ranks left on the others then saw (a failed or timed-out
  // collective): that stays the job's error.
  v1::JobError error = report.error();
  if (error.code() == v1::JOB_ERROR_CODE_UNSPECIFIED) error.set_code(v1::JOB_ERROR_CODE_RANK_FAILED);
  if (has_error && (r->job.error().code() != v1::JOB_ERROR_CODE_NODE_LOST || IsUserError(error.code())))
    *r->job.mutable_error() = error;
  store_->Update(*r);
  if (has_error) Event(*r, v1::JOB_EVENT_KIND_NOTE, report.error().message(), v1::JOB_EVENT_LEVEL_ERROR);
}

}  // namespace shardtune::server
