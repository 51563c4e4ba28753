#pragma once
// The worker's entry point, shared by `shardtune-worker JOB.yaml` and `shardtune train JOB.yaml`
// with one rank: loads and validates the spec, trains, and maps failures to exit codes.

#include <string>

#include "common/exit_codes.h"
#include "common/logging.h"
#include "worker/export.h"
#include "worker/synthesize.h"

namespace shardtune {

// One rank of the job. Logs in `log_format`, each line naming the job: the server's job id
// (SHARDTUNE_JOB_ID) when the server started it, else the spec's name. With `json_summary`, rank 0
// also prints the outcome on stdout as one JSON object (`shardtune train --output json`):
// {"ok": true, "job", "steps", "last_loss", "last_val_loss", "finished", "paused", "output_dir", ...},
// or FailureJson's.
int RunWorker(const std::string& job_path, const std::string& log_level, LogFormat log_format = LogFormat::kText,
              bool json_summary = false);

// `shardtune export CHECKPOINT`: on this process, or on each of the ranks mpirun started (which
// split the output files among them). `processes` is --np (0: not given): it must be the number
// of processes taking part. A failure on one rank ends them all; nothing is left visible.
int RunExport(const CheckpointExport& request, int processes);

// `shardtune synthesize` (worker/synthesize.h), on this process or the ranks mpirun started
// (--np, as RunExport's); rank 0 prints what it did (`json_output`: as one JSON object).
int RunSynthesize(const SynthesizeOptions& options, int processes, bool json_output);

// Maps an exception from the training side to an exit code, logging it.
int ReportFailure(const std::exception& error);

// A failure as `--output json` prints it on stdout: {"ok": false, "error": {"kind", "message"}},
// kind as the server's JobErrorCode names it (invalid_spec, invalid_data, invalid_input, ...).
std::string FailureJson(const std::exception& error);

}  // namespace shardtune
