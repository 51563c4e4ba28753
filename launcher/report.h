#pragma once
// `shardtune report RUN_DIR`: the training and validation curves of a run as a PNG, and a short
// summary (best evaluation, final figures) as text, for people who would rather look than read
// metrics.jsonl. Reads only RUN_DIR/metrics.jsonl (and job.yaml for the name); no LibTorch.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace shardtune {

// What the summary says: the run, its training loss, its evaluations.
struct RunReport {
  std::string name;
  std::filesystem::path run_dir, curves;
  int64_t steps = 0, tokens = 0;
  struct Point {
    int64_t step = 0;
    double loss = 0;
    double perplexity = 0;  // of an evaluation (0 when metrics.jsonl has none)
  };
  Point first_loss, last_loss, lowest_loss;   // training loss
  std::optional<Point> best_eval, last_eval;  // val_loss; none without validation data
  std::string text;                           // as report.txt holds it
};

// Writes RUN_DIR/report.png and RUN_DIR/report.txt. Error kNotFound without metrics.jsonl,
// kDataLoss when it holds no training step or a line that is not a metrics record.
RunReport WriteRunReport(const std::filesystem::path& run_dir);
// `report --output json`'s document: {"ok": true, "run", "run_dir", "steps", "tokens",
// "train_loss": {"first", "last", "lowest"}, "best_eval", "last_eval", "curves", "summary"}, each
// loss a {"step", "loss"} (an evaluation's also "perplexity"), an absent evaluation null.
std::string RunReportJson(const RunReport& report);

}  // namespace shardtune
