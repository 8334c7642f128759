#include "common/codec.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

v1::EncodingParams Fp32() {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_FP32);
  return p;
}

TEST(Fp32Codec, RoundTripsBitForBit) {
  const std::vector<float> values = {1.5f, -0.0f, 3e-38f, 1e-45f, -7.25e30f};
  auto payload = Encode(Fp32(), values);
  ASSERT_TRUE(payload.ok());
  EXPECT_EQ(payload->size(), values.size() * 4);
  std::vector<float> out(values.size(), 99.0f);
  ASSERT_TRUE(Decode(Fp32(), *payload, absl::MakeSpan(out)).ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(std::signbit(out[i]), std::signbit(values[i]));
    EXPECT_EQ(out[i], values[i]);
  }
}

TEST(Fp32Codec, DecodeAccumulateAddsTheWeightedValues) {
  auto payload = Encode(Fp32(), std::vector<float>{2.0f, -4.0f});
  ASSERT_TRUE(payload.ok());
  std::vector<float> out = {1.0f, 1.0f};
  ASSERT_TRUE(DecodeAccumulate(Fp32(), *payload, 0.25f, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], 0.0f);
}

TEST(Fp32Codec, EncoderRefusesNaNAndInf) {
  EXPECT_EQ(Encode(Fp32(), std::vector<float>{1.0f, std::nanf("")}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Encode(Fp32(), std::vector<float>{std::numeric_limits<float>::infinity()}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(Fp32Codec, DecoderRefusesAWrongSizeAndLeavesTheOutputAlone) {
  std::vector<float> out = {7.0f, 7.0f};
  EXPECT_EQ(DecodeAccumulate(Fp32(), std::string(7, '\0'), 1.0f, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeAccumulate(Fp32(), std::string(12, '\0'), 1.0f, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out, (std::vector<float>{7.0f, 7.0f}));
}

TEST(Fp32Codec, DecoderRefusesNaNAnywhereAndLeavesTheOutputAlone) {
  std::string payload(8, '\0');
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(payload.data() + 4, &nan, 4);
  std::vector<float> out = {7.0f, 7.0f};
  absl::Status s = DecodeAccumulate(Fp32(), payload, 1.0f, absl::MakeSpan(out));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("value 1"), std::string::npos) << s;
  EXPECT_EQ(out, (std::vector<float>{7.0f, 7.0f}));
}

TEST(Codec, UnknownEncodingIsInvalidArgument) {
  v1::EncodingParams p;
  p.set_encoding(static_cast<v1::Encoding>(42));
  EXPECT_EQ(ValidateEncodingParams(p).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodedSize(p, 10).status().code(), absl::StatusCode::kInvalidArgument);
  v1::EncodingParams unspecified;
  EXPECT_EQ(ValidateEncodingParams(unspecified).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ps

namespace ps {
namespace {

v1::EncodingParams Params(v1::Encoding e, uint32_t bits = 0, uint32_t bucket = 0) {
  v1::EncodingParams p;
  p.set_encoding(e);
  if (bits > 0) p.set_bits(bits);
  if (bucket > 0) p.set_bucket_size(bucket);
  p.set_seed(7);
  return p;
}

// A parallel apply decodes disjoint ranges; together they must equal one whole decode, bit for
// bit, for every encoding (a last bucket shorter than the others included).
TEST(Codec, DecodingInAlignedRangesEqualsOneWholeDecode) {
  const uint64_t n = 1000;
  std::vector<float> values(n);
  for (uint64_t i = 0; i < n; ++i) values[i] = std::sin(0.37 * i) * (1 + i % 5);
  for (const v1::EncodingParams& p :
       {Params(v1::ENCODING_FP32), Params(v1::ENCODING_FP16), Params(v1::ENCODING_BF16),
        Params(v1::ENCODING_QSGD, 4, 96), Params(v1::ENCODING_QSGD, 3, 512),
        Params(v1::ENCODING_SIGN, 0, 64)}) {
    SCOPED_TRACE(EncodingName(p));
    absl::StatusOr<std::string> payload = Encode(p, values);
    ASSERT_TRUE(payload.ok()) << payload.status();
    std::vector<float> whole(n, 0.5f), ranged(n, 0.5f);
    const float whole_max = DecodeAccumulateValidated(p, *payload, 0.25f, absl::MakeSpan(whole));
    const uint64_t grain = 3 * RangeAlignment(p);
    float ranged_max = 0.0f;
    for (uint64_t first = 0; first < n; first += grain) {
      const uint64_t len = std::min(grain, n - first);
      ranged_max =
          std::max(ranged_max, DecodeAccumulateRange(p, *payload, 0.25f, n, first,
                                                     absl::MakeSpan(ranged).subspan(first, len)));
    }
    EXPECT_EQ(ranged, whole);
    EXPECT_EQ(ranged_max, whole_max);
    std::vector<double> whole_d(n, 0.0), ranged_d(n, 0.0);
    DecodeAccumulateValidated(p, *payload, 3.0, absl::MakeSpan(whole_d));
    for (uint64_t first = 0; first < n; first += grain) {
      const uint64_t len = std::min(grain, n - first);
      DecodeAccumulateRange(p, *payload, 3.0, n, first,
                            absl::MakeSpan(ranged_d).subspan(first, len));
    }
    EXPECT_EQ(ranged_d, whole_d);
  }
}

}  // namespace
}  // namespace ps
