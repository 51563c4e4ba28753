#include "common/job_checks.h"

#include <fmt/format.h>

#include "common/run_dir.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

std::optional<SpecProblem> BatchProblem(const JobSpec& spec, int64_t ranks) {
  const TrainingSpec& t = spec.training;
  if (t.global_batch_size == 0 || t.global_batch_size % (t.micro_batch_size * ranks) == 0) return std::nullopt;
  return SpecProblem{"training.global_batch_size",
                     fmt::format("{} is not divisible by micro_batch_size {} x data-parallel ranks {}",
                                 t.global_batch_size, t.micro_batch_size, ranks)};
}

std::optional<SpecProblem> ShardGroupProblem(const JobSpec& spec, int64_t ranks) {
  const int64_t group = spec.sharding.shard_group_size;
  if (group == 0 || ranks % group == 0) return std::nullopt;
  return SpecProblem{"sharding.shard_group_size", fmt::format("{} does not divide the {} ranks", group, ranks)};
}

}  // namespace

std::vector<SpecProblem> ProblemsForWorld(const JobSpec& spec, int64_t ranks) {
  std::vector<SpecProblem> problems;
  for (auto problem : {BatchProblem(spec, ranks), ShardGroupProblem(spec, ranks)})
    if (problem) problems.push_back(std::move(*problem));
  return problems;
}

std::vector<SpecProblem> ProblemsForAnyWorld(const JobSpec& spec) {
  std::vector<SpecProblem> problems;
  if (auto problem = BatchProblem(spec, 1)) problems.push_back(std::move(*problem));
  return problems;
}

void RequireFitsWorld(const JobSpec& spec, int64_t ranks) {
  const std::vector<SpecProblem> problems = ProblemsForWorld(spec, ranks);
  if (problems.empty()) return;
  std::vector<std::string> lines;
  for (const SpecProblem& p : problems) lines.push_back(p.ToString());
  throw SpecError(fmt::format("job {} on {} ranks", spec.name, ranks), std::move(lines));
}

std::optional<std::string> FinishedRunProblem(const fs::path& output_dir) {
  if (!RunDir(output_dir).HasFinal()) return std::nullopt;
  return fmt::format(
      "output.dir {} holds a finished run (final/); choose another output.dir, or move it away to train again",
      output_dir.string());
}

}  // namespace shardtune
