#pragma once
// A one-line progress bar with ETA on stderr when it is a terminal; silent otherwise (the
// trainer then logs a line per step instead).

#include <chrono>
#include <cstdint>
#include <string>

namespace shardtune {

class ProgressBar {
 public:
  ProgressBar(int64_t first_step, int64_t total_steps);
  ~ProgressBar();
  bool active() const { return active_; }
  // `step` steps done of total; `status` follows the bar (loss, lr, throughput).
  void Update(int64_t step, const std::string& status);
  void Finish();

 private:
  bool active_ = false;
  int64_t first_step_;
  int64_t total_steps_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace shardtune
