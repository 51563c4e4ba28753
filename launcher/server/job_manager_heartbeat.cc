// Liveness of running attempts: rank 0's heartbeats, and the kill of an attempt that went silent
// (JobManager::ExpectHeartbeats, docs/server.md).
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/logging.h"
#include "launcher/server/attempt_end.h"
#include "launcher/server/job_manager.h"

namespace shardtune::server {

void JobManager::Heartbeat(const v1::HeartbeatReport& report) {
  std::lock_guard<std::mutex> lock(heartbeat_mutex_);
  HeartbeatClock& clock = heartbeats_[report.job_id()];
  if (clock.attempt != report.attempt()) clock = HeartbeatClock{report.attempt()};  // a Slurm attempt's first
  clock.since_ms = NowMs();
  clock.heard = true;
}

void JobManager::ExpectHeartbeats(const JobRecord& r) {
  std::lock_guard<std::mutex> lock(heartbeat_mutex_);
  heartbeats_[r.job.id()] = HeartbeatClock{r.job.attempt(), NowMs()};
}

void JobManager::KillIfSilent(JobRecord& r) {
  // A silent rank 0 is a process that stopped (SIGSTOP, a hung mount, a machine swapping
  // itself to death) or a host cut off without mpirun noticing. Which of those the server cannot
  // tell, so the error is TIMEOUT (a configured time passed), not NODE_LOST (a host known to be
  // gone); both are retried from the latest checkpoint.
  constexpr double kFirstHeartbeatGraceS = 60;
  if (config_.heartbeat_timeout_s <= 0 || r.cancel_requested) return;
  double silent_s = 0;
  {
    std::lock_guard<std::mutex> lock(heartbeat_mutex_);
    const auto it = heartbeats_.find(r.job.id());
    if (it == heartbeats_.end() || it->second.attempt != r.job.attempt() || it->second.fired) return;
    // Before the first heartbeat (loading a model) and after rank 0 has reported how the attempt
    // ended (its heartbeat thread stops while the ranks shut down), silence is expected for longer.
    const bool lenient = !it->second.heard || r.result_reported;
    const double allowed_s =
        lenient ? std::max(config_.heartbeat_timeout_s, kFirstHeartbeatGraceS) : config_.heartbeat_timeout_s;
    silent_s = static_cast<double>(NowMs() - it->second.since_ms) / 1000;
    if (silent_s <= allowed_s) return;
    it->second.fired = true;
  }
  const LogJobScope log_job(r.job.id());
  if (r.result_reported) {
    // What rank 0 reported (a checkpoint that hit a full disk, say) is why the attempt ended and
    // stays its error; a shutdown that hangs is only killed.
    spdlog::warn("job {}: attempt {}: ranks still running {:.0f} s after rank 0 reported its result: killed",
                 r.job.id(), r.job.attempt(), silent_s);
    Signal(r, SIGKILL);
    return;
  }
  SetError(r.job, v1::JOB_ERROR_CODE_TIMEOUT,
           fmt::format("no heartbeat from rank 0 for {:.0f} s (heartbeat_timeout_s: {:g}): the attempt's processes "
                       "were killed",
                       silent_s, config_.heartbeat_timeout_s));
  r.job.mutable_error()->set_rank(0);
  store_->Update(r);
  Event(r, v1::JOB_EVENT_KIND_NOTE, "timeout: " + r.job.error().message(), v1::JOB_EVENT_LEVEL_ERROR);
  spdlog::warn("job {}: attempt {}: {}", r.job.id(), r.job.attempt(), r.job.error().message());
  Signal(r, SIGKILL);
}

}  // namespace shardtune::server
