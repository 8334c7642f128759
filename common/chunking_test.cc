#include "common/chunking.h"

#include <string>

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(ChunkRanges, CoversThePayloadInOrderWithALastShortChunk) {
  const auto ranges = ChunkRanges(10, 4);
  ASSERT_EQ(ranges.size(), 3u);
  EXPECT_EQ(ranges[0].offset, 0u);
  EXPECT_EQ(ranges[1].offset, 4u);
  EXPECT_EQ(ranges[2].offset, 8u);
  EXPECT_EQ(ranges[2].size, 2u);
}

TEST(ChunkRanges, GivesOneEmptyChunkForAnEmptyPayload) {
  const auto ranges = ChunkRanges(0, 4);
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].size, 0u);
}

TEST(PayloadAssembler, GivenChunksInOrderReassemblesThePayload) {
  PayloadAssembler a(6, 4);
  ASSERT_TRUE(a.Add(0, "abcd").ok());
  EXPECT_FALSE(a.CheckComplete().ok());
  ASSERT_TRUE(a.Add(4, "ef").ok());
  EXPECT_TRUE(a.CheckComplete().ok());
  EXPECT_EQ(a.payload(), "abcdef");
}

TEST(PayloadAssembler, RefusesAnOverlappingChunkAndKeepsWhatItHad) {
  PayloadAssembler a(6, 4);
  ASSERT_TRUE(a.Add(0, "abcd").ok());
  absl::Status s = a.Add(2, "cd");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s;
  EXPECT_EQ(a.received_bytes(), 4u);
}

TEST(PayloadAssembler, RefusesAGap) {
  PayloadAssembler a(8, 4);
  absl::Status s = a.Add(4, "efgh");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("gap"), std::string::npos) << s;
}

TEST(PayloadAssembler, RefusesAChunkPastTheEnd) {
  PayloadAssembler a(6, 8);
  absl::Status s = a.Add(0, "abcdefg");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("past the end"), std::string::npos) << s;
}

TEST(PayloadAssembler, RefusesAChunkOverTheSizeLimit) {
  PayloadAssembler a(100, 4);
  EXPECT_EQ(a.Add(0, "abcde").code(), absl::StatusCode::kInvalidArgument);
}

TEST(PayloadAssembler, ReportsMissingTailBytes) {
  PayloadAssembler a(6, 4);
  ASSERT_TRUE(a.Add(0, "abcd").ok());
  absl::Status s = a.CheckComplete();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[4, 6)"), std::string::npos) << s;
}

TEST(PayloadAssembler, OnlyTheFirstChunkMayBeEmpty) {
  PayloadAssembler a(4, 4);
  ASSERT_TRUE(a.Add(0, "").ok());
  ASSERT_TRUE(a.Add(0, "ab").ok());
  EXPECT_EQ(a.Add(2, "").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(a.Add(2, "cd").ok());
  EXPECT_TRUE(a.CheckComplete().ok());
}

TEST(PayloadAssembler, RefusesTooManyTinyChunks) {
  PayloadAssembler a(1000, 100);  // 10 full chunks: at most 16 * 10 + 16 = 176
  ASSERT_EQ(a.max_chunks(), 176u);
  absl::Status s;
  uint64_t offset = 0;
  while (s.ok() && offset < 1000) {
    s = a.Add(offset, "x");
    if (s.ok()) ++offset;
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(offset, 176u);
}

}  // namespace
}  // namespace ps
