#pragma once
// Rank 0's record of training: one JSON object a line in OUTPUT_DIR/metrics.jsonl (flushed at
// once, so that tails see it), and the same numbers as TensorBoard scalars in OUTPUT_DIR/tb/.

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/tensorboard.h"

namespace shardtune {

class MetricsLog {
 public:
  // Resuming at `resume_step` > 0 drops the lines an interrupted run wrote past it, and starts
  // a TensorBoard file that tells TensorBoard to do the same.
  MetricsLog(const std::filesystem::path& output_dir, int64_t resume_step);

  // A record with "step"; every number in it (nested objects too, as "a/b") becomes a scalar.
  void Write(const nlohmann::json& record);

 private:
  std::filesystem::path path_;
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

}  // namespace shardtune
