#include "server/membership.h"

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(Membership, HandsOutFreeRanksAndRefusesWhenFull) {
  FakeClock clock;
  Membership m(2, absl::Seconds(10), &clock);
  auto a = m.Join("a", -1);
  auto b = m.Join("b", -1);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->rank, 0);
  EXPECT_EQ(b->rank, 1);
  EXPECT_NE(a->id, b->id);
  EXPECT_TRUE(m.assembled());
  EXPECT_EQ(m.Join("c", -1).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(m.Leave(a->id).ok());
  auto c = m.Join("c", -1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->rank, 0) << "the freed rank is reused";
}

TEST(Membership, RequestedRanksAreHonouredOrRefused) {
  FakeClock clock;
  Membership m(3, absl::Seconds(10), &clock);
  EXPECT_EQ(m.Join("a", 2)->rank, 2);
  EXPECT_EQ(m.Join("b", 2).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m.Join("c", 3).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Membership, ASilentWorkerIsDroppedAfterTheLease) {
  FakeClock clock;
  Membership m(2, absl::Seconds(10), &clock);
  const uint64_t a = m.Join("a", -1)->id;
  const uint64_t b = m.Join("b", -1)->id;
  clock.Advance(absl::Seconds(6));
  ASSERT_TRUE(m.Touch(b).ok());
  clock.Advance(absl::Seconds(6));
  const auto dropped = m.ExpireLeases();
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].id, a);
  EXPECT_FALSE(m.IsMember(a));
  EXPECT_TRUE(m.IsMember(b));
  EXPECT_EQ(m.Touch(a).code(), absl::StatusCode::kNotFound);
}

TEST(Membership, AMemberWithACallInFlightIsNotDroppedAndTheCallsEndRenewsTheLease) {
  FakeClock clock;
  Membership m(2, absl::Seconds(10), &clock);
  const uint64_t a = m.Join("a", -1)->id;
  ASSERT_TRUE(m.BeginCall(a).ok());
  ASSERT_TRUE(m.BeginCall(a).ok());  // a push and a pull at once
  clock.Advance(absl::Seconds(30));
  EXPECT_TRUE(m.ExpireLeases().empty());
  m.EndCall(a);
  clock.Advance(absl::Seconds(30));
  EXPECT_TRUE(m.ExpireLeases().empty()) << "one call is still in flight";
  m.EndCall(a);
  clock.Advance(absl::Seconds(6));
  EXPECT_TRUE(m.ExpireLeases().empty()) << "the call's end renewed the lease";
  clock.Advance(absl::Seconds(6));
  ASSERT_EQ(m.ExpireLeases().size(), 1u);
  EXPECT_EQ(m.BeginCall(a).code(), absl::StatusCode::kNotFound);
  m.EndCall(a);  // of a member that is gone: nothing
  EXPECT_EQ(m.size(), 0u);
}

TEST(Membership, AllLeftOnlyAfterAssembly) {
  FakeClock clock;
  Membership m(2, absl::Seconds(10), &clock);
  const uint64_t a = m.Join("a", -1)->id;
  ASSERT_TRUE(m.Leave(a).ok());
  EXPECT_FALSE(m.all_left()) << "never assembled";
  const uint64_t b = m.Join("b", -1)->id;
  const uint64_t c = m.Join("c", -1)->id;
  ASSERT_TRUE(m.Leave(b).ok());
  EXPECT_FALSE(m.all_left());
  ASSERT_TRUE(m.Leave(c).ok());
  EXPECT_TRUE(m.all_left());
}

}  // namespace
}  // namespace ps
