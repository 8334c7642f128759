#include "common/thread_pool.h"

#include <atomic>

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(ThreadPool, RunsEveryScheduledClosureBeforeTheDestructorReturns) {
  std::atomic<int> sum{0};
  {
    ThreadPool pool(3);
    for (int i = 1; i <= 100; ++i) pool.Schedule([&sum, i] { sum += i; });
  }
  EXPECT_EQ(sum.load(), 5050);
}

}  // namespace
}  // namespace ps
