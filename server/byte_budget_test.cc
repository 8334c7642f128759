#include "server/byte_budget.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

struct CountingWaiter : ByteBudget::Waiter {
  std::atomic<int> granted{0};
  void OnGranted() override { ++granted; }
};

TEST(ByteBudgetTest, GrantsWhatFitsAndQueuesTheRestInArrivalOrder) {
  ByteBudget budget(100);
  CountingWaiter a, big, small;
  EXPECT_TRUE(budget.Acquire(60, &a));
  EXPECT_FALSE(budget.Acquire(50, &big));
  // 30 would fit, but it arrived after `big`, which goes first.
  EXPECT_FALSE(budget.Acquire(30, &small));
  EXPECT_EQ(budget.num_waiting(), 2u);
  budget.Release(60);
  EXPECT_EQ(big.granted, 1);
  EXPECT_EQ(small.granted, 1);
  EXPECT_EQ(budget.held(), 80u);
  EXPECT_EQ(budget.waited_total(), 2u);
}

TEST(ByteBudgetTest, ARequestLargerThanTheBudgetRunsAloneRatherThanNever) {
  ByteBudget budget(10);
  CountingWaiter w, next;
  EXPECT_TRUE(budget.Acquire(1000, &w));  // nothing held: let in
  EXPECT_FALSE(budget.Acquire(1, &next));
  budget.Release(1000);
  EXPECT_EQ(next.granted, 1);
  EXPECT_EQ(budget.held(), 1u);
}

TEST(ByteBudgetTest, ACancelledWaiterIsNeverGrantedAndStopsHoldingOthersBack) {
  ByteBudget budget(100);
  CountingWaiter holder, big, small;
  EXPECT_TRUE(budget.Acquire(60, &holder));
  EXPECT_FALSE(budget.Acquire(90, &big));
  EXPECT_FALSE(budget.Acquire(40, &small));
  EXPECT_TRUE(budget.Cancel(&big));
  EXPECT_FALSE(budget.Cancel(&big));  // only once
  EXPECT_EQ(small.granted, 1);        // fits beside `holder` once `big` is gone
  budget.Release(60);
  budget.Release(40);
  EXPECT_EQ(big.granted, 0);
  EXPECT_EQ(budget.held(), 0u);
  EXPECT_FALSE(budget.Cancel(&small));  // granted, not queued
}

// Every request is granted exactly once and the budget is never over its limit by more than the
// one request that may run alone.
TEST(ByteBudgetTest, ManyThreadsEachGetTheirBytesOnceAndGiveThemBack) {
  ByteBudget budget(1000);
  constexpr int kThreads = 8, kRounds = 200;
  std::atomic<uint64_t> max_held{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        struct Once : ByteBudget::Waiter {
          std::atomic<bool> granted{false};
          void OnGranted() override { granted = true; }
        } waiter;
        const uint64_t bytes = 100 + 50 * t;
        if (!budget.Acquire(bytes, &waiter)) {
          while (!waiter.granted) std::this_thread::yield();
        }
        uint64_t held = budget.held(), seen = max_held.load();
        while (held > seen && !max_held.compare_exchange_weak(seen, held)) {
        }
        budget.Release(bytes);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(budget.held(), 0u);
  EXPECT_EQ(budget.num_waiting(), 0u);
  EXPECT_LE(max_held.load(), 1000u);
}

}  // namespace
}  // namespace ps
