#include "app/shard_index.h"

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(OrdinalOfPodName, IsTheNumberAfterTheLastDash) {
  EXPECT_EQ(OrdinalOfPodName("ps-server-0").value(), 0);
  EXPECT_EQ(OrdinalOfPodName("ps-server-17").value(), 17);
  EXPECT_EQ(OrdinalOfPodName("a-1-2").value(), 2);
}

TEST(OrdinalOfPodName, NamesWithoutAnOrdinalAreRefused) {
  for (const char* name : {"", "ps-server", "ps-server-", "ps-server-x1", "ps-server-+1",
                           "ps-server- 1", "7", "ps-server-99999999999"}) {
    const absl::StatusOr<int> ordinal = OrdinalOfPodName(name);
    EXPECT_EQ(ordinal.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
}

TEST(ShardIndexFromFlag, AGivenIndexWinsOverThePodName) {
  EXPECT_EQ(ShardIndexFromFlag("3", "ps-server-1").value(), 3);
  EXPECT_EQ(ShardIndexFromFlag("0", nullptr).value(), 0);
}

// Kubernetes 1.27: no pod-index label, so PS_SHARD_INDEX is set but empty.
TEST(ShardIndexFromFlag, GivenAnEmptyFlagInAStatefulSetPodWeShouldTakeThePodsOrdinal) {
  EXPECT_EQ(ShardIndexFromFlag("", "ps-server-1").value(), 1);
  EXPECT_EQ(ShardIndexFromFlag("", "ps-server-12").value(), 12);
}

TEST(ShardIndexFromFlag, WithoutFlagOrPodNameTheIndexIsZeroAsBefore) {
  EXPECT_EQ(ShardIndexFromFlag("", nullptr).value(), 0);
  EXPECT_EQ(ShardIndexFromFlag("", "").value(), 0);
}

TEST(ShardIndexFromFlag, BadValuesNameTheirSource) {
  const absl::StatusOr<int> negative = ShardIndexFromFlag("-1", "ps-server-1");
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("--shard_index"), absl::string_view::npos);
  EXPECT_EQ(ShardIndexFromFlag("one", nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<int> no_ordinal = ShardIndexFromFlag("", "my-laptop");
  EXPECT_EQ(no_ordinal.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_ordinal.status().message().find("POD_NAME"), absl::string_view::npos);
  EXPECT_NE(no_ordinal.status().message().find("my-laptop"), absl::string_view::npos);
}

}  // namespace
}  // namespace ps
