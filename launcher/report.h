#pragma once
// `shardtune report RUN_DIR`: the training and validation curves of a run as a PNG, and a short
// summary (best evaluation, final figures) as text, for people who would rather look than read
// metrics.jsonl. Reads only RUN_DIR/metrics.jsonl (and job.yaml for the name); no LibTorch.

#include <filesystem>
#include <string>

namespace shardtune {

// Writes RUN_DIR/report.png and RUN_DIR/report.txt; returns the summary text.
std::string WriteRunReport(const std::filesystem::path& run_dir);

}  // namespace shardtune
