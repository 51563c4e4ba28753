#pragma once
// `shardtune report SWEEP_DIR`: a sweep's trials as a table sorted by objective, and charts: the
// objective against the trial number with the best so far, and the objective against each
// parameter (docs/sweeps.md, "Reporting a sweep"). Reads only SWEEP_DIR/trials.jsonl, whose header
// records the parameters and the objective; no sweep file, no LibTorch.

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shardtune {

struct SweepReport {
  std::string name, metric, goal;  // the objective's metric and goal (minimize or maximize)
  std::filesystem::path sweep_dir;
  struct Row {
    int64_t trial = 0;
    std::string status;  // running, completed, stopped, failed
    int64_t steps = 0;
    std::optional<double> objective;
    nlohmann::json values;  // {key path: value}
    std::string note;
  };
  // Sorted by objective, best first (equal objectives by trial number), then the trials without
  // one (failed, or not finished) by number.
  std::vector<Row> rows;
  // (trial, the best objective of the trials numbered up to it), at each trial with an objective.
  std::vector<std::pair<int64_t, double>> best_so_far;
  std::vector<std::filesystem::path> plots;  // the objective's chart, then one per parameter
  std::string text;                          // the table, as report.txt holds it
};

// Whether `dir` is a sweep's directory (it holds trials.jsonl).
bool IsSweepDir(const std::filesystem::path& dir);
// Reads SWEEP_DIR/trials.jsonl, writes the charts and report.txt (sweep/sweep_dir.h's layout).
// Error kNotFound without trials.jsonl, kDataLoss for a line that is not an event (a torn last
// line is skipped), kFailedPrecondition when no trial has an objective yet (nothing to draw).
SweepReport WriteSweepReport(const std::filesystem::path& sweep_dir);
// `report --output json`'s document for a sweep: {"ok": true, "sweep", "sweep_dir", "metric",
// "goal", "trials": [{"trial", "status", "steps", "objective", "values", "note"}] in the table's
// order, "best_so_far": [{"trial", "objective"}], "plots": [paths], "summary"}.
std::string SweepReportJson(const SweepReport& report);

}  // namespace shardtune
