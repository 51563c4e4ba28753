#pragma once
// The worker's entry point, shared by `shardtune-worker JOB.yaml` and `shardtune train JOB.yaml`
// with one rank: loads and validates the spec, trains, and maps failures to exit codes.

#include <string>

#include "common/exit_codes.h"
#include "common/logging.h"
#include "worker/export.h"

namespace shardtune {

// Logs in `log_format`, each line naming the job: the server's job id (SHARDTUNE_JOB_ID) when the
// server started it, else the spec's name.
int RunWorker(const std::string& job_path, const std::string& log_level, LogFormat log_format = LogFormat::kText);

// `shardtune export CHECKPOINT`: on this process, or on each of the ranks mpirun started (which
// split the output files among them). `processes` is --np (0: not given): it must be the number
// of processes taking part. A failure on one rank ends them all; nothing is left visible.
int RunExport(const CheckpointExport& request, int processes);

// Maps an exception from the training side to an exit code, logging it.
int ReportFailure(const std::exception& error);

}  // namespace shardtune
