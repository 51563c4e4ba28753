#pragma once
// The output directory of a training run (output.dir), as docs/formats.md lays it out. Every
// path of that layout is spelled here and nowhere else: the worker writes through it, `shardtune
// export` and `report` read through it, the server asks it whether a run finished.
//
//   job.yaml                 the resolved spec                    RunDir::JobYaml
//   metrics.jsonl            one JSON object a line               RunDir::Metrics
//   tb/                      TensorBoard event files              RunDir::TensorBoard
//   logs/rank-NNNNN.log      each rank's log                      RunDir::RankLog
//   logs/profile-step-N-rank-NNNNN.json  a profiled step's trace  RunDir::ProfileTrace
//   checkpoints/step-N/      a training checkpoint                RunDir::Checkpoint (CheckpointDir)
//   checkpoints/best/        with output.keep_best                RunDir::BestCheckpoint
//   generations.jsonl        with output.generations              RunDir::Generations
//   report.png, report.txt   written by `shardtune report`        RunDir::ReportPng, ReportText
//   final/                   the fine-tuned model                 RunDir::Final
//
// Files are written atomically (common/atomic_file.h); directories (checkpoints, final/) are
// assembled under a temporary sibling and renamed into place (StagedDirectory, below), so a
// directory of this layout that exists is complete. RunDir and CheckpointDir are names only:
// constructing one touches no file.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shardtune {

class RunDir;

// A directory that readers see complete or not at all: it is assembled in a temporary sibling,
// TARGET.tmp, and renamed over TARGET by Commit() (fsynced; RenameDirectoryAtomic). A crash
// leaves at most a stale TARGET.tmp, which the next Begin() clears. Checkpoints, final/ and
// every exported model are written this way. Under several ranks, one calls Begin() and Commit()
// (with barriers around the others' writes into staging()); every rank may name it.
class StagedDirectory {
 public:
  enum class Existing {
    kRefuse,   // Begin() fails if TARGET exists: a result is never overwritten (final/, exports)
    kReplace,  // Commit() replaces TARGET (checkpoints/best/, a checkpoint written again)
  };

  StagedDirectory(std::filesystem::path target, Existing existing);

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& staging() const { return staging_; }

  // Makes staging() an empty directory (creating its parents).
  void Begin() const;
  // Moves staging() into place: fsynced, renamed, its parent fsynced.
  void Commit() const;

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
  Existing existing_;
};

// One checkpoint directory (checkpoints/step-N/ or checkpoints/best/) and the files in it.
class CheckpointDir {
 public:
  explicit CheckpointDir(std::filesystem::path path) : path_(std::move(path)) {}

  const std::filesystem::path& path() const { return path_; }
  // index.json: format, world size, stage, unit layout and which range each rank file holds.
  std::filesystem::path Index() const { return path_ / "index.json"; }
  // trainer_state.json: step, tokens, seed, loss scale, the best evaluation.
  std::filesystem::path TrainerStateFile() const { return path_ / "trainer_state.json"; }
  // rank-NNNNN.safetensors: a rank's shards; RankFileName is how index.json names it.
  static std::string RankFileName(int rank);
  std::filesystem::path RankFile(int rank) const { return path_ / RankFileName(rank); }

  // Whether the checkpoint's index is there (a directory that is, or could be, a checkpoint).
  bool HasIndex() const;
  // The run that wrote it: checkpoints/NAME is two levels below the run directory.
  RunDir Run() const;

 private:
  std::filesystem::path path_;
};

// "step-N" (N: the optimizer steps completed), the name of a periodic checkpoint's directory.
std::string CheckpointDirName(int64_t step);
// N of a directory name "step-N" (decimal digits only, and nothing after them); nullopt for any
// other name ("best", "step-5.tmp", ...).
std::optional<int64_t> ParseCheckpointDirName(std::string_view name);

struct StepCheckpoint {
  int64_t step = 0;
  CheckpointDir dir;
};

class RunDir {
 public:
  explicit RunDir(std::filesystem::path root) : root_(std::move(root)) {}

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path JobYaml() const { return root_ / "job.yaml"; }
  std::filesystem::path Metrics() const { return root_ / "metrics.jsonl"; }
  std::filesystem::path TensorBoard() const { return root_ / "tb"; }
  std::filesystem::path Logs() const { return root_ / "logs"; }
  std::filesystem::path RankLog(int rank) const;
  // With SHARDTUNE_PROFILE_STEP=step: that step's (1-based) Chrome trace on `rank`.
  std::filesystem::path ProfileTrace(int64_t step, int rank) const;
  std::filesystem::path Checkpoints() const { return root_ / "checkpoints"; }
  CheckpointDir Checkpoint(int64_t step) const { return CheckpointDir(Checkpoints() / CheckpointDirName(step)); }
  CheckpointDir BestCheckpoint() const { return CheckpointDir(Checkpoints() / "best"); }
  std::filesystem::path Generations() const { return root_ / "generations.jsonl"; }
  std::filesystem::path ReportPng() const { return root_ / "report.png"; }
  std::filesystem::path ReportText() const { return root_ / "report.txt"; }
  std::filesystem::path Final() const { return root_ / "final"; }
  // The token caches (worker/data/token_cache.h) unless data.cache_dir names another directory.
  std::filesystem::path Cache() const { return root_ / "cache"; }

  // Whether final/ exists: it is renamed into place complete, so the run finished and exported.
  bool HasFinal() const;

  // The periodic checkpoints (directories named step-N; complete, since they are renamed into
  // place whole), newest first; none when checkpoints/ does not exist. best/ is not among them.
  std::vector<StepCheckpoint> CheckpointsNewestFirst() const;
  std::optional<StepCheckpoint> LatestCheckpoint() const;
  // Removes what a run killed while writing a checkpoint left: checkpoints/NAME.tmp directories
  // (never a checkpoint: none has an index until it is renamed into place). Only while no rank of
  // this run writes one: at the start of a run, before it resumes.
  void RemoveUnfinishedCheckpoints() const;
  // Removes all but the newest `keep` periodic checkpoints (keep <= 0 keeps all); best/ stays.
  void PruneCheckpoints(int64_t keep) const;

 private:
  std::filesystem::path root_;
};

}  // namespace shardtune
