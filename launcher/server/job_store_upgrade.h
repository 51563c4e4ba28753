#pragma once
// Schema version 4's rewrite of the job store's stored jobs. The store keeps each job as a
// serialized v1::Job (jobs.job, and events.job: the job after each event). Before v1 settled its
// shape, a Job held its times as int64 Unix milliseconds (fields 7, 8, 9, 18: created_ms,
// started_ms, finished_ms, estimated_finish_ms) and JobError its code's name as a string (field
// 1); those numbers are reserved now, so an old blob parses with them as unknown fields. The
// upgrade moves them into create_time, start_time, finish_time, estimated_finish_time and
// JobError.code, and drops what is left unknown.

#include <sqlite3.h>

#include <string>

namespace shardtune::server {

// One stored job, upgraded (a blob without old fields comes back equal). Throws Error (DATA_LOSS)
// for bytes that are not a Job.
std::string UpgradeJobBlob(const std::string& blob);

// Every blob of jobs.job and events.job, in the caller's transaction on `db`.
void UpgradeJobBlobs(sqlite3* db);

}  // namespace shardtune::server
