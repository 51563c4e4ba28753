#include "worker/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace shardtune {

namespace {

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  return fmt::format("{:02d}:{:02d}:{:02d}", s / 3600, (s / 60) % 60, s % 60);
}

}  // namespace

ProgressBar::ProgressBar(int64_t first_step, int64_t total_steps)
    : active_(::isatty(STDERR_FILENO) == 1),
      first_step_(first_step),
      total_steps_(total_steps),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(int64_t step, const std::string& status) {
  if (!active_) return;
  constexpr int kWidth = 30;
  const double fraction = total_steps_ > 0 ? static_cast<double>(step) / static_cast<double>(total_steps_) : 1.0;
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done_here = step - first_step_;
  const double eta =
      done_here > 0 ? elapsed / static_cast<double>(done_here) * static_cast<double>(total_steps_ - step) : 0.0;
  const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
  std::fprintf(stderr, "\r\033[K[%s] %lld/%lld %s  elapsed %s  ETA %s", bar.c_str(), static_cast<long long>(step),
               static_cast<long long>(total_steps_), status.c_str(), Duration(elapsed).c_str(), Duration(eta).c_str());
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (!active_) return;
  std::fputc('\n', stderr);
  active_ = false;
}

}  // namespace shardtune
