#include "common/thread_pool.h"

#include <atomic>
#include <vector>

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

TEST(ThreadPool, ParallelForCoversEveryIndexOnceInRangesOfTheGrain) {
  ThreadPool pool(3);
  for (uint64_t n : {0, 1, 7, 64, 1000, 1001}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, 64, [&](uint64_t begin, uint64_t end) {
      EXPECT_EQ(begin % 64, 0u);
      EXPECT_TRUE(end - begin == 64 || end == n) << begin << " " << end;
      for (uint64_t i = begin; i < end; ++i) ++hits[i];
    });
    for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPool, ParallelForFinishesWhenEveryPoolThreadIsBusy) {
  ThreadPool pool(1);
  absl::Mutex mu;
  bool release = false;
  pool.Schedule([&] {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&release));
  });
  std::atomic<uint64_t> sum{0};
  pool.ParallelFor(100, 10, [&](uint64_t begin, uint64_t end) { sum += end - begin; });
  EXPECT_EQ(sum.load(), 100u);  // the caller ran every range itself
  absl::MutexLock lock(&mu);
  release = true;
}

}  // namespace
}  // namespace ps
