#pragma once
// `shardtune sweep SWEEP.yaml [--np N]`: runs a sweep's trials on this machine (docs/sweeps.md,
// "Running a sweep"). Each trial is `shardtune train` of its job spec in a child process group
// (parallel_trials at once), its evaluations read from its metrics.jsonl as they are written;
// trials.jsonl records everything, so running the command again resumes the sweep.

#include <string>

#include "launcher/launch.h"

namespace shardtune {

struct SweepCommandOptions {
  std::string sweep_path;
  LaunchOptions launch;  // ranks per trial (--np), log level and format passed to each trial
  // The cores (MPI slots) the trials share (--slots); 0: the cores this process may run on. At
  // most slots / ranks-per-trial trials run at once (at least one), however large parallel_trials.
  int slots = 0;
};

// Runs the sweep to its end; returns an exit code (common/exit_codes.h): 0 when at least one
// trial has an objective, kExitFailed when every trial failed, kExitInvalidInput for a bad
// spec, 130 when interrupted (SIGINT or SIGTERM: the running trials are stopped, to be rerun).
int RunSweepCommand(const SweepCommandOptions& options);

}  // namespace shardtune
