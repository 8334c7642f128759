// FP16 and BF16 payloads: round to nearest even, exact decoding, edge values, exact sizes, NaN and
// Inf refused both when encoding and in a payload, and the fused decode-accumulate.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/codec.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

v1::EncodingParams Params(v1::Encoding e) {
  v1::EncodingParams p;
  p.set_encoding(e);
  return p;
}

std::vector<float> RoundTrip(v1::Encoding e, const std::vector<float>& values) {
  absl::StatusOr<std::string> payload = Encode(Params(e), values);
  EXPECT_TRUE(payload.ok()) << payload.status();
  if (!payload.ok()) return {};
  EXPECT_EQ(payload->size(), 2 * values.size());
  std::vector<float> out(values.size());
  EXPECT_TRUE(Decode(Params(e), *payload, absl::MakeSpan(out)).ok());
  return out;
}

uint16_t Bits16(const std::string& payload, size_t i) {
  uint16_t v;
  std::memcpy(&v, payload.data() + 2 * i, 2);
  return v;
}

TEST(Fp16, RepresentableValuesRoundTripExactly) {
  const std::vector<float> exact = {0.0f,
                                    1.0f,
                                    -2.5f,
                                    65504.0f,
                                    -65504.0f,
                                    0.000061035156f,
                                    5.9604645e-8f /* smallest subnormal */,
                                    0.333251953125f};
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, exact), exact);
  const std::vector<float> negative_zero = RoundTrip(v1::ENCODING_FP16, {-0.0f});
  EXPECT_TRUE(std::signbit(negative_zero[0]));
}

TEST(Fp16, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1).
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {1.0f + 0x1p-11f})[0], 1.0f);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {1.0f + 3 * 0x1p-11f})[0], 1.0f + 0x1p-9f);
  // Just above the tie rounds up.
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {1.0f + 0x1p-11f + 0x1p-20f})[0], 1.0f + 0x1p-10f);
  // Subnormals round at their own last bit: half the smallest subnormal is a tie to 0.
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {0x1p-25f})[0], 0.0f);
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {0x1p-25f + 0x1p-30f})[0], 0x1p-24f);
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {3 * 0x1p-25f})[0], 2 * 0x1p-24f);
  // The largest subnormal rounds up into the smallest normal.
  EXPECT_EQ(RoundTrip(v1::ENCODING_FP16, {0x1p-14f - 0x1p-26f})[0], 0x1p-14f);
}

TEST(Fp16, EveryHalfDecodesAndEncodesBackToItself) {
  // All 63,488 finite halves: decoding then encoding gives the same bits.
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7c00u) == 0x7c00u) continue;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::string payload(reinterpret_cast<const char*>(&bits), 2);
    float v = 0;
    ASSERT_TRUE(Decode(Params(v1::ENCODING_FP16), payload, absl::MakeSpan(&v, 1)).ok()) << h;
    absl::StatusOr<std::string> again = Encode(Params(v1::ENCODING_FP16), {v});
    ASSERT_TRUE(again.ok()) << h;
    ASSERT_EQ(Bits16(*again, 0), bits) << "half 0x" << std::hex << h;
  }
}

TEST(Fp16, OutOfRangeNaNAndInfAreRefused) {
  EXPECT_TRUE(Encode(Params(v1::ENCODING_FP16), {65519.0f}).ok());  // rounds down to 65504
  absl::Status big = Encode(Params(v1::ENCODING_FP16), {1.0f, 65520.0f}).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("value 1"), std::string::npos) << big;
  EXPECT_NE(big.message().find("BF16"), std::string::npos) << big;
  EXPECT_FALSE(Encode(Params(v1::ENCODING_FP16), {std::nanf("")}).ok());
  EXPECT_FALSE(Encode(Params(v1::ENCODING_BF16), {std::numeric_limits<float>::infinity()}).ok());
  EXPECT_FALSE(Encode(Params(v1::ENCODING_BF16), {std::numeric_limits<float>::max()}).ok());
  // A payload that carries NaN or Inf is refused, and the output is untouched.
  for (auto [e, inf] : {std::pair{v1::ENCODING_FP16, uint16_t{0x7c00}},
                        std::pair{v1::ENCODING_BF16, uint16_t{0x7f80}}}) {
    const uint16_t values[2] = {0x3c00, static_cast<uint16_t>(inf | 1)};
    const std::string payload(reinterpret_cast<const char*>(values), 4);
    std::vector<float> out = {7.0f, 7.0f};
    absl::Status s = DecodeAccumulate(Params(e), payload, 1.0f, absl::MakeSpan(out));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("value 1"), std::string::npos) << s;
    EXPECT_EQ(out, (std::vector<float>{7.0f, 7.0f}));
    EXPECT_FALSE(ValidatePayload(Params(e), payload.substr(0, 3), 2).ok()) << "exact size";
  }
}

TEST(Bf16, KeepsFloatsRangeAndRoundsToNearestEven) {
  // -3e38 is 0xff61b1e6: the low half is past the tie, so 0xff62 = -1.765625 * 2^127. 1e-40, a
  // float subnormal (0x000116c2), keeps its top bits: 2^-133.
  EXPECT_EQ(RoundTrip(v1::ENCODING_BF16, {1.0f, -3.0e38f, 1e-40f}),
            (std::vector<float>{1.0f, -0x1.c4p+127f, 0x1p-133f}));
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1).
  EXPECT_EQ(RoundTrip(v1::ENCODING_BF16, {1.0f + 0x1p-8f})[0], 1.0f);
  EXPECT_EQ(RoundTrip(v1::ENCODING_BF16, {1.0f + 3 * 0x1p-8f})[0], 1.0f + 0x1p-6f);
  EXPECT_TRUE(std::signbit(RoundTrip(v1::ENCODING_BF16, {-0.0f})[0]));
}

TEST(Fp16AndBf16, FusedDecodeAccumulateMatchesDecodeAndReportsTheLargest) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 10.0f);
  std::vector<float> values(1000);
  for (float& v : values) v = normal(rng);
  for (v1::Encoding e : {v1::ENCODING_FP16, v1::ENCODING_BF16}) {
    const std::string payload = *Encode(Params(e), values);
    std::vector<float> decoded(values.size());
    ASSERT_TRUE(Decode(Params(e), payload, absl::MakeSpan(decoded)).ok());
    double max_abs = 0;
    ASSERT_TRUE(ValidatePayload(Params(e), payload, values.size(), &max_abs).ok());
    float largest = 0;
    for (float v : decoded) largest = std::max(largest, std::abs(v));
    EXPECT_EQ(max_abs, largest);
    std::vector<float> acc(values.size(), 1.0f);
    const float max_after =
        DecodeAccumulateValidated(Params(e), payload, 0.5f, absl::MakeSpan(acc));
    float expected_max = 0;
    for (size_t i = 0; i < acc.size(); ++i) {
      EXPECT_EQ(acc[i], 1.0f + 0.5f * decoded[i]);
      expected_max = std::max(expected_max, std::abs(acc[i]));
      // The rounding error is at most half a unit in the last place: 2^-11 (FP16), 2^-8 (BF16).
      EXPECT_LE(std::abs(decoded[i] - values[i]),
                std::abs(values[i]) * (e == v1::ENCODING_FP16 ? 0x1p-11f : 0x1p-8f) + 1e-7f);
    }
    EXPECT_EQ(max_after, expected_max);
    std::vector<double> sum(values.size(), 0.0);
    ASSERT_TRUE(DecodeAccumulate(Params(e), payload, 2.0, absl::MakeSpan(sum)).ok());
    EXPECT_EQ(sum[5], 2.0 * decoded[5]);
  }
  EXPECT_EQ(*ParseEncoding("bf16"), v1::ENCODING_BF16);
  EXPECT_EQ(EncodingName(Params(v1::ENCODING_FP16)), "FP16");
}

}  // namespace
}  // namespace ps
