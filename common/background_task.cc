#include "common/background_task.h"

#include <chrono>
#include <utility>

#include "common/error.h"

namespace shardtune {

BackgroundTask::~BackgroundTask() {
  if (thread_.joinable()) thread_.join();
}

void BackgroundTask::Start(std::function<void()> task) {
  ST_CHECK(idle(), "BackgroundTask::Start while a task is running");
  finished_.store(false, std::memory_order_relaxed);
  outcome_ = TaskOutcome{};
  thread_ = std::thread([this, task = std::move(task)] {
    const auto start = std::chrono::steady_clock::now();
    try {
      task();
    } catch (...) {
      outcome_.error = std::current_exception();
    }
    outcome_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    finished_.store(true, std::memory_order_release);
  });
}

TaskOutcome BackgroundTask::Wait() {
  if (idle()) return TaskOutcome{};
  thread_.join();
  return std::exchange(outcome_, TaskOutcome{});
}

}  // namespace shardtune
