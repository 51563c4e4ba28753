// Checkpoints during training: a host snapshot of each rank's shard, written and fsynced in the
// background (output.async_checkpoint) while the steps go on, and made visible, by rank 0's
// rename of DIR.tmp to DIR with index.json written last, only once every rank's write has
// finished. A crash at any point before that leaves DIR.tmp, which is never resumed from, and the
// previous checkpoint as the newest one.

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "common/error.h"
#include "worker/trainer_internal.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

// Adds the seconds from its construction to its destruction to `total`: the training thread's
// time on checkpoints, however the scope ends.
class StallTimer {
 public:
  explicit StallTimer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~StallTimer() { total_ += Seconds(); }
  double Seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

// Writes this rank's file of `snapshot` into every directory of `dirs` (hard links after the
// first, where the file system has them). Runs on the writer's thread: no collectives.
void WriteSnapshot(const ShardSnapshot& snapshot, const std::vector<fs::path>& dirs) {
  if (snapshot.file_rank < 0 || dirs.empty()) return;
  WriteShardFile(snapshot, dirs.front());
  const fs::path written = CheckpointDir(dirs.front()).RankFile(snapshot.file_rank);
  for (size_t i = 1; i < dirs.size(); ++i) {
    std::error_code error;
    fs::create_hard_link(written, CheckpointDir(dirs[i]).RankFile(snapshot.file_rank), error);
    if (error) WriteShardFile(snapshot, dirs[i]);
  }
}

}  // namespace

TrainerState Trainer::State(int64_t step) const {
  TrainerState state{step, tokens_, spec_.training.seed, loss_scale_.scale(), total_steps_};
  state.best_step = best_step_;
  state.best_value = best_value_;
  state.evaluations_since_best = evaluations_since_best_;
  return state;
}

void Trainer::ReserveCheckpointMemory() {
  const OutputSpec& output = spec_.output;
  if (!output.async_checkpoint || (output.checkpoint_every == 0 && !output.keep_best && !options_.stop_check)) return;
  const auto start = std::chrono::steady_clock::now();
  engine_->SnapshotShards(snapshot_, SnapshotMemory::kOwned);
  spdlog::debug("asynchronous checkpoints: host memory for a snapshot of this rank's shard reserved in {:.3f} s",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

std::vector<CheckpointDir> Trainer::DueCheckpoints(int64_t step, bool periodic) {
  std::vector<CheckpointDir> dirs;
  if (periodic) dirs.push_back(run_dir_.Checkpoint(step));
  if (best_unsaved_) dirs.push_back(run_dir_.BestCheckpoint());
  best_unsaved_ = false;
  return dirs;
}

void Trainer::Checkpoint(int64_t step, const std::vector<CheckpointDir>& dirs) {
  if (dirs.empty()) return;
  FinishCheckpoint("the next checkpoint");  // one in flight: its snapshot's memory is this one's
  StallTimer stall(checkpoint_stall_s_);
  CheckpointInFlight checkpoint{step, {}, State(step), std::nullopt};
  std::vector<fs::path> staging;
  for (const CheckpointDir& dir : dirs) {
    checkpoint.dirs.emplace_back(dir.path(), StagedDirectory::Existing::kReplace);
    staging.push_back(checkpoint.dirs.back().staging());
    if (rank0_) checkpoint.dirs.back().Begin();
  }
  Barrier("checkpoint directory");
  const bool async = spec_.output.async_checkpoint;
  const double before_snapshot = stall.Seconds();
  engine_->SnapshotShards(snapshot_, async ? SnapshotMemory::kOwned : SnapshotMemory::kShared);
  spdlog::debug("checkpoint step {}: directories ready in {:.3f} s, shard copied to host memory in {:.3f} s", step,
                before_snapshot, stall.Seconds() - before_snapshot);
  checkpoint_ = std::move(checkpoint);
  const bool pause = knobs_.pause_checkpoint_write == step;
  checkpoint_writer_.Start([snapshot = &snapshot_, staging, pause, step] {
    WriteSnapshot(*snapshot, staging);
    if (!pause) return;
    spdlog::warn("SHARDTUNE_TEST_PAUSE_CHECKPOINT_WRITE: the write of checkpoint step {} pauses before it is done",
                 step);
    std::this_thread::sleep_for(std::chrono::hours(1));
  });
  if (async) return;
  // In the step: the same write, waited for here.
  EveryRankWroteCheckpoint(/*wait=*/true);
  CommitCheckpoint();
}

void Trainer::PollCheckpoint() {
  if (!checkpoint_) return;
  StallTimer stall(checkpoint_stall_s_);
  if (EveryRankWroteCheckpoint(/*wait=*/false)) CommitCheckpoint();
}

void Trainer::FinishCheckpoint(const char* before) {
  if (!checkpoint_) return;
  StallTimer stall(checkpoint_stall_s_);
  if (!EveryRankWroteCheckpoint(/*wait=*/false)) {
    EveryRankWroteCheckpoint(/*wait=*/true);
    if (rank0_) {
      spdlog::info("waited {:.2f} s for the write of checkpoint step {} to finish on every rank, before {}",
                   stall.Seconds(), checkpoint_->step, before);
    }
  }
  CommitCheckpoint();
}

bool Trainer::EveryRankWroteCheckpoint(bool wait) {
  CheckpointInFlight& checkpoint = *checkpoint_;
  if (!checkpoint.written && (wait || checkpoint_writer_.Finished())) checkpoint.written = checkpoint_writer_.Wait();
  const bool failed = checkpoint.written && checkpoint.written->error;
  // Summed over ranks: those still writing, those whose write failed.
  at::Tensor counts =
      at::tensor({checkpoint.written ? 0.0 : 1.0, failed ? 1.0 : 0.0}, at::TensorOptions().dtype(at::kDouble))
          .to(device_);
  AllReduceSumNow(world_, counts, CollectiveTag{"checkpoint written", checkpoint.step});
  const at::Tensor host = counts.cpu();
  if (host[0].item<double>() > 0) return false;
  if (host[1].item<double>() > 0) {
    // Every rank fails, the one whose write failed with its own error; nothing is committed.
    if (failed) std::rethrow_exception(checkpoint.written->error);
    Fail(ErrorCode::kInternal, "checkpoint of step {}: {} rank(s) failed to write their shards (see their logs)",
         checkpoint.step, host[1].item<double>());
  }
  return true;
}

void Trainer::CommitCheckpoint() {
  const CheckpointInFlight checkpoint = std::move(*checkpoint_);
  checkpoint_.reset();
  if (rank0_) {
    checkpoint_write_s_ += checkpoint.written->seconds;
    for (const StagedDirectory& dir : checkpoint.dirs) {
      WriteTrainerState(dir.staging(), checkpoint.state);
      WriteShardIndex(snapshot_, dir.staging());  // last: a directory with an index is whole
      dir.Commit();
      if (ParseCheckpointDirName(dir.target().filename().string())) {  // checkpoints/step-N
        run_dir_.PruneCheckpoints(spec_.output.keep_checkpoints);
        if (options_.on_checkpoint) options_.on_checkpoint(checkpoint.step, dir.target().string());
      }
    }
  }
  Barrier("checkpoint commit");  // every rank sees it committed (the end of training may load best/)
}

}  // namespace shardtune
