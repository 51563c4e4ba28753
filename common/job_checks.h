#pragma once
// Checks of a job against what its spec's text alone does not settle: the number of data-parallel
// ranks it runs on, and what its output directory already holds. Each rule is written here once;
// the parser (when the spec names its resources), the server (at admission, and when a job resumes
// on another rank count) and the trainer (on the ranks it was started with) call these, so the
// rules and their wording cannot drift apart. No LibTorch.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace shardtune {

struct SpecProblem {
  std::string key;      // the spec's key path: "training.global_batch_size"
  std::string message;  // what is wrong, with the numbers: "64 is not divisible by ..."
  std::string ToString() const { return key + ": " + message; }
};

// Every problem of `spec` on a world of `ranks` data-parallel ranks (empty: it fits): the global
// batch must split into whole micro-batches on every rank, and a shard group must divide the ranks.
std::vector<SpecProblem> ProblemsForWorld(const JobSpec& spec, int64_t ranks);

// What every world size needs, for a spec that names no ranks yet: the global batch must be whole
// micro-batches (the check of a world of one rank; a shard group can fit some world of any size).
std::vector<SpecProblem> ProblemsForAnyWorld(const JobSpec& spec);

// Throws SpecError naming every problem of ProblemsForWorld(spec, ranks), if there is any.
void RequireFitsWorld(const JobSpec& spec, int64_t ranks);

// Why a run may not be written into `output_dir`: it holds a finished run (final/), whose model a
// new run would overwrite. nullopt: nothing in the way. (A directory with checkpoints but no
// final/ is an unfinished run, which a new start resumes.)
std::optional<std::string> FinishedRunProblem(const std::filesystem::path& output_dir);

}  // namespace shardtune
