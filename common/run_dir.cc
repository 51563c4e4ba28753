#include "common/run_dir.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "common/atomic_file.h"
#include "common/error.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kStepPrefix = "step-";
constexpr std::string_view kStagingSuffix = ".tmp";  // StagedDirectory's TARGET.tmp

}  // namespace

StagedDirectory::StagedDirectory(fs::path target, Existing existing)
    : target_(std::move(target)), staging_(target_.string() + std::string(kStagingSuffix)), existing_(existing) {}

void StagedDirectory::Begin() const {
  if (existing_ == Existing::kRefuse && fs::exists(target_))
    Fail(ErrorCode::kFailedPrecondition, "{}: already exists; refusing to overwrite it", target_.string());
  fs::remove_all(staging_);
  fs::create_directories(staging_);
}

void StagedDirectory::Commit() const {
  if (existing_ == Existing::kReplace) fs::remove_all(target_);
  RenameDirectoryAtomic(staging_, target_);
}

std::string CheckpointDir::RankFileName(int rank) { return fmt::format("rank-{:05d}.safetensors", rank); }

bool CheckpointDir::HasIndex() const {
  std::error_code ec;
  return fs::exists(Index(), ec);
}

RunDir CheckpointDir::Run() const { return RunDir(path_.parent_path().parent_path()); }

std::string CheckpointDirName(int64_t step) { return fmt::format("{}{}", kStepPrefix, step); }

std::optional<int64_t> ParseCheckpointDirName(std::string_view name) {
  if (name.substr(0, kStepPrefix.size()) != kStepPrefix) return std::nullopt;
  const std::string_view digits = name.substr(kStepPrefix.size());
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int64_t step = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;  // out of range
  return step;
}

fs::path RunDir::RankLog(int rank) const { return Logs() / fmt::format("rank-{:05d}.log", rank); }

fs::path RunDir::ProfileTrace(int64_t step, int rank) const {
  return Logs() / fmt::format("profile-step-{}-rank-{:05d}.json", step, rank);
}

bool RunDir::HasFinal() const {
  std::error_code ec;
  return fs::exists(Final(), ec);
}

std::vector<StepCheckpoint> RunDir::CheckpointsNewestFirst() const {
  std::vector<StepCheckpoint> found;
  std::error_code ec;
  if (!fs::is_directory(Checkpoints(), ec)) return found;
  for (const auto& entry : fs::directory_iterator(Checkpoints())) {
    if (!entry.is_directory()) continue;
    if (const auto step = ParseCheckpointDirName(entry.path().filename().string()))
      found.push_back(StepCheckpoint{*step, CheckpointDir(entry.path())});
  }
  std::sort(found.begin(), found.end(), [](const StepCheckpoint& a, const StepCheckpoint& b) {
    return a.step != b.step ? a.step > b.step : a.dir.path() > b.dir.path();
  });
  return found;
}

std::optional<StepCheckpoint> RunDir::LatestCheckpoint() const {
  auto found = CheckpointsNewestFirst();
  if (found.empty()) return std::nullopt;
  return std::move(found.front());
}

void RunDir::RemoveUnfinishedCheckpoints() const {
  std::error_code ec;
  if (!fs::is_directory(Checkpoints(), ec)) return;
  std::vector<fs::path> unfinished;
  for (const auto& entry : fs::directory_iterator(Checkpoints())) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.size() > kStagingSuffix.size() && name.ends_with(kStagingSuffix))
      unfinished.push_back(entry.path());
  }
  for (const fs::path& path : unfinished) fs::remove_all(path);
}

void RunDir::PruneCheckpoints(int64_t keep) const {
  if (keep <= 0) return;
  const auto found = CheckpointsNewestFirst();
  for (size_t i = static_cast<size_t>(keep); i < found.size(); ++i) fs::remove_all(found[i].dir.path());
}

}  // namespace shardtune
