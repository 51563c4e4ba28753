#pragma once
// One function at a time run on a thread of its own, for work the caller must not wait for (a
// checkpoint's write and fsync) but must later know finished, and how.
//
// Contract: one owning thread calls every member. Start() only when idle(); Wait() collects the
// task's outcome (its seconds, and what it threw: nothing is rethrown, so that the caller can
// first tell others) and makes the object idle again. Finished() never blocks. The destructor
// waits for a running task (it cannot be cancelled) and drops its outcome: whoever destroys a
// busy task is failing already.

#include <atomic>
#include <exception>
#include <functional>
#include <thread>

namespace shardtune {

struct TaskOutcome {
  double seconds = 0;        // how long the task ran
  std::exception_ptr error;  // what it threw; null when it returned
};

class BackgroundTask {
 public:
  BackgroundTask() = default;
  ~BackgroundTask();
  BackgroundTask(const BackgroundTask&) = delete;
  BackgroundTask& operator=(const BackgroundTask&) = delete;

  // Runs `task` on a new thread. Precondition: idle().
  void Start(std::function<void()> task);
  // No task started, or the last one collected by Wait().
  bool idle() const { return !thread_.joinable(); }
  // The started task has returned or thrown (true when idle).
  bool Finished() const { return idle() || finished_.load(std::memory_order_acquire); }
  // Blocks until the task ends and returns its outcome (an empty one when idle).
  TaskOutcome Wait();

 private:
  std::thread thread_;
  std::atomic<bool> finished_{false};
  TaskOutcome outcome_;  // written by the task's thread before finished_, read after the join
};

}  // namespace shardtune
