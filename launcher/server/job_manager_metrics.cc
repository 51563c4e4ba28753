// What GET /metrics reads of the scheduler (launcher/server/server_metrics.h).
#include "launcher/server/job_manager.h"

namespace shardtune::server {

JobManager::PoolState JobManager::Pool() {
  std::lock_guard<std::mutex> lock(mutex_);  // submitting_, as the scheduler's Tick counts it
  const std::vector<JobRecord> unfinished = store_->Unfinished();
  PoolState pool;
  pool.slots = config_.total_slots();
  pool.slots_in_use = UsedSlots(unfinished).slots;
  for (const JobRecord& r : unfinished)
    if (r.job.status() == v1::JOB_STATUS_RUNNING) pool.running.push_back(r.job);
  return pool;
}

}  // namespace shardtune::server
