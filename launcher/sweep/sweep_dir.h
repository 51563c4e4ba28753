#pragma once
// A sweep's directory (SWEEP_DIR, docs/sweeps.md). Every path of its layout is spelled here: the
// runner (`shardtune sweep`) writes through it, `shardtune report` reads through it. Names only:
// constructing one touches no file.
//
//   trials.jsonl                 the search's events                  SweepDir::Trials
//   trials/NNN.yaml              trial N's job spec                   SweepDir::TrialSpec
//   trials/NNN.log               its `shardtune train` output         SweepDir::TrialLog
//   trials/NNN/                  its run directory (common/run_dir.h) SweepDir::TrialRun
//   trials/NNN.gate/             verdicts on its evaluations, while it runs (worker_contract.h)  SweepDir::TrialGate
//   best -> trials/NNN/final     the best trial's model               SweepDir::Best
//   report.txt                   written by `shardtune report`        SweepDir::ReportText
//   report-objective.png         the objective against the trial      SweepDir::ObjectivePng
//   report-PATH.png              the objective against parameter PATH SweepDir::ParameterPng

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <string>

namespace shardtune::sweep {

class SweepDir {
 public:
  explicit SweepDir(std::filesystem::path dir) : dir_(std::move(dir)) {}

  // Trial numbers as the directory spells them: 000, 001, ... (wider past 999).
  static std::string TrialName(int64_t trial) { return fmt::format("{:03d}", trial); }

  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path Trials() const { return dir_ / "trials.jsonl"; }
  std::filesystem::path TrialsDir() const { return dir_ / "trials"; }
  std::filesystem::path TrialSpec(int64_t trial) const { return TrialsDir() / (TrialName(trial) + ".yaml"); }
  std::filesystem::path TrialLog(int64_t trial) const { return TrialsDir() / (TrialName(trial) + ".log"); }
  std::filesystem::path TrialRun(int64_t trial) const { return TrialsDir() / TrialName(trial); }
  std::filesystem::path TrialGate(int64_t trial) const { return TrialsDir() / (TrialName(trial) + ".gate"); }
  std::filesystem::path Best() const { return dir_ / "best"; }
  // Where Best() points, relative to the sweep directory (a link that survives moving it).
  static std::filesystem::path BestTarget(int64_t trial) {
    return std::filesystem::path("trials") / TrialName(trial) / "final";
  }
  std::filesystem::path ReportText() const { return dir_ / "report.txt"; }
  std::filesystem::path ObjectivePng() const { return dir_ / "report-objective.png"; }
  // `path` is a job-spec key path (letters, digits, '_' and '.'), safe in a file name as it is.
  std::filesystem::path ParameterPng(const std::string& path) const { return dir_ / ("report-" + path + ".png"); }

 private:
  std::filesystem::path dir_;
};

}  // namespace shardtune::sweep
