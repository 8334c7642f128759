#include "server/version_wait_list.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

class RecordingWaiter : public VersionWaitList::Waiter {
 public:
  void OnReady(bool timed_out) override {
    timed_out_ = timed_out;
    ++calls_;
    done_.Notify();
  }
  absl::Notification done_;
  std::atomic<bool> timed_out_{false};
  std::atomic<int> calls_{0};
};

TEST(VersionWaitList, ANewerVersionIsServedAtOnce) {
  VersionWaitList list(3);
  RecordingWaiter w;
  EXPECT_FALSE(list.WaitForNewer(2, absl::InfiniteFuture(), &w));
  EXPECT_EQ(w.calls_, 0);
}

TEST(VersionWaitList, PublishWakesOnlyWaitersBehindTheNewVersion) {
  VersionWaitList list(1);
  RecordingWaiter behind, ahead;
  ASSERT_TRUE(list.WaitForNewer(1, absl::InfiniteFuture(), &behind));
  ASSERT_TRUE(list.WaitForNewer(2, absl::InfiniteFuture(), &ahead));
  list.Publish(2);
  ASSERT_TRUE(behind.done_.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(behind.timed_out_);
  EXPECT_EQ(ahead.calls_, 0);
  EXPECT_EQ(list.num_waiting(), 1u);
  EXPECT_TRUE(list.Cancel(&ahead));
  EXPECT_FALSE(list.Cancel(&ahead));
}

TEST(VersionWaitList, TheDeadlineWakesAWaiterAsTimedOut) {
  VersionWaitList list(1);
  RecordingWaiter w;
  ASSERT_TRUE(list.WaitForNewer(1, absl::Now() + absl::Milliseconds(20), &w));
  // Generous bound: this only catches a waiter that is never woken.
  ASSERT_TRUE(w.done_.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(w.timed_out_);
  EXPECT_EQ(w.calls_, 1);
}

TEST(VersionWaitList, ShutdownWakesEveryoneAndRefusesNewWaiters) {
  VersionWaitList list(1);
  RecordingWaiter w, late;
  ASSERT_TRUE(list.WaitForNewer(1, absl::InfiniteFuture(), &w));
  list.Shutdown();
  EXPECT_EQ(w.calls_, 1);
  EXPECT_TRUE(w.timed_out_);
  EXPECT_FALSE(list.WaitForNewer(1, absl::InfiniteFuture(), &late));
}

}  // namespace
}  // namespace ps
