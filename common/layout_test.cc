#include "common/layout.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace ps {
namespace {

Layout Make(std::vector<TensorShape> tensors) {
  absl::StatusOr<Layout> layout = Layout::Create(std::move(tensors));
  EXPECT_TRUE(layout.ok()) << layout.status();
  return layout.ok() ? *layout : Layout();
}

TEST(LayoutTest, SizesOffsetsAndTheFlatLayout) {
  const Layout l = Make({{"w", {3, 4}}, {"b", {4}}, {"scale", {}}});
  EXPECT_EQ(l.size(), 17u);
  EXPECT_EQ(l.offset(0), 0u);
  EXPECT_EQ(l.offset(1), 12u);
  EXPECT_EQ(l.offset(2), 16u);
  EXPECT_EQ(l.tensors()[2].size(), 1u);  // a scalar
  absl::StatusOr<Layout> flat = Layout::Flat(10);
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ(flat->tensors()[0].ToString(), "params [10]");
}

TEST(LayoutTest, BadLayoutsAreRefusedNamingTheProblem) {
  EXPECT_FALSE(Layout::Create({}).ok());
  EXPECT_FALSE(Layout::Flat(0).ok());
  absl::Status twice = Layout::Create({{"w", {2}}, {"w", {3}}}).status();
  EXPECT_NE(twice.message().find("'w' appears twice"), std::string::npos) << twice;
  absl::Status zero = Layout::Create({{"w", {2, 0}}}).status();
  EXPECT_NE(zero.message().find("dimension of 0"), std::string::npos) << zero;
  EXPECT_FALSE(Layout::Create({{"has space", {2}}}).ok());
  EXPECT_FALSE(Layout::Create({{std::string(300, 'x'), {2}}}).ok());
  // A product that would overflow 64 bits is refused, not wrapped.
  absl::Status huge = Layout::Create({{"a", {uint64_t{1} << 33, uint64_t{1} << 33}}}).status();
  EXPECT_EQ(huge.code(), absl::StatusCode::kInvalidArgument) << huge;
  EXPECT_FALSE(
      Layout::Create({{"a", {uint64_t{1} << 33}}, {"b", {uint64_t{1} << 33}}, {"c", {1}}}).ok());
}

TEST(LayoutTest, ParsesTextAndJson) {
  absl::StatusOr<Layout> text =
      Layout::Parse("# a model\nconv.weight 8 3 3 3\n\nconv.bias 8  # bias\n");
  ASSERT_TRUE(text.ok()) << text.status();
  absl::StatusOr<Layout> json = Layout::Parse(
      R"({"tensors": [{"name": "conv.weight", "shape": [8, 3, 3, 3]}, {"name": "conv.bias", "shape": [8]}]})");
  ASSERT_TRUE(json.ok()) << json.status();
  absl::StatusOr<Layout> list = Layout::Parse(
      R"([{"name": "conv.weight", "shape": [8, 3, 3, 3]}, {"name": "conv.bias", "shape": ["8"]}])");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(*text, *json);
  EXPECT_EQ(*text, *list);
  EXPECT_EQ(text->size(), 8u * 27 + 8);
  EXPECT_EQ(text->Fingerprint(), json->Fingerprint());
  absl::Status bad = Layout::Parse("w 3 x\n").status();
  EXPECT_NE(bad.message().find("line 1"), std::string::npos) << bad;
  EXPECT_FALSE(Layout::Parse(R"({"tensors": [{"name": "w", "dims": [3]}]})").ok());
}

TEST(LayoutTest, ProtoRoundTripAndFingerprintsDiffer) {
  const Layout a = Make({{"w", {3, 4}}, {"b", {4}}});
  absl::StatusOr<Layout> back = Layout::FromProto(a.ToProto());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, a);
  EXPECT_NE(a.Fingerprint(), Make({{"w", {4, 3}}, {"b", {4}}}).Fingerprint());
  EXPECT_NE(a.Fingerprint(), Make({{"w", {12}}, {"b", {4}}}).Fingerprint());
  EXPECT_NE(a.Fingerprint(), Make({{"v", {3, 4}}, {"b", {4}}}).Fingerprint());
  EXPECT_EQ(a.Fingerprint().size(), 16u);
}

TEST(LayoutTest, TheDifferenceNamesTheFirstTensorAndBothShapes) {
  const Layout server = Make({{"w1", {128, 784}}, {"b1", {128}}, {"w2", {10, 128}}});
  EXPECT_TRUE(CheckSameLayout(server, server, "the server's").ok());
  absl::Status s = CheckSameLayout(
      server, Make({{"w1", {128, 784}}, {"b1", {64}}, {"w2", {10, 64}}}), "the server's");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("tensor 1"), std::string::npos) << s;
  EXPECT_NE(s.message().find("b1 [64]"), std::string::npos) << s;
  EXPECT_NE(s.message().find("b1 [128]"), std::string::npos) << s;
  absl::Status shorter = CheckSameLayout(server, Make({{"w1", {128, 784}}}), "the server's");
  EXPECT_NE(shorter.message().find("fewer tensors"), std::string::npos) << shorter;
}

TEST(LayoutTest, ShardRangesTileTheModel) {
  for (uint64_t d : {1u, 7u, 100u}) {
    uint64_t next = 0;
    for (uint32_t i = 0; i < 3; ++i) {
      const KeyRange r = ShardRange(d, i, 3);
      EXPECT_EQ(r.begin, next);
      next = r.end;
    }
    EXPECT_EQ(next, d);
  }
}

}  // namespace
}  // namespace ps
