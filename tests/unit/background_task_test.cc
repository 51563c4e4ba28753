#include "common/background_task.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace shardtune {
namespace {

TEST(BackgroundTask, RunsOneTaskAtATimeAndReportsHowItEnded) {
  BackgroundTask task;
  EXPECT_TRUE(task.idle());
  EXPECT_TRUE(task.Finished());
  EXPECT_EQ(task.Wait().error, nullptr);  // idle: an empty outcome

  std::atomic<bool> release{false};
  int result = 0;
  task.Start([&] {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    result = 42;
  });
  EXPECT_FALSE(task.idle());
  EXPECT_FALSE(task.Finished());  // it cannot have finished: it waits for `release`
  release = true;
  const TaskOutcome done = task.Wait();
  EXPECT_TRUE(task.idle());
  EXPECT_EQ(result, 42);
  EXPECT_EQ(done.error, nullptr);
  EXPECT_GE(done.seconds, 0.02);

  // What a task throws comes back with its outcome, and the object runs the next one.
  task.Start([] { throw std::runtime_error("disk full"); });
  while (!task.Finished()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const TaskOutcome failed = task.Wait();
  ASSERT_NE(failed.error, nullptr);
  try {
    std::rethrow_exception(failed.error);
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "disk full");
  }
  task.Start([&] { result = 7; });
  EXPECT_EQ(task.Wait().error, nullptr);
  EXPECT_EQ(result, 7);
}

TEST(BackgroundTask, DestroyingABusyTaskWaitsForIt) {
  std::atomic<bool> ran{false};
  {
    BackgroundTask task;
    task.Start([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ran = true;
    });
  }
  EXPECT_TRUE(ran.load());
}

}  // namespace
}  // namespace shardtune
