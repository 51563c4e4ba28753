#pragma once
// The worker's entry point, shared by `shardtune-worker JOB.yaml` and `shardtune train JOB.yaml`
// with one rank: loads and validates the spec, trains, and maps failures to exit codes.

#include <string>

#include "common/exit_codes.h"

namespace shardtune {

int RunWorker(const std::string& job_path, const std::string& log_level);

// Maps an exception from the training side to an exit code, logging it.
int ReportFailure(const std::exception& error);

}  // namespace shardtune
