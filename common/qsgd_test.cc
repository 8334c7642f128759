// QSGD and scaled-sign codecs: statistics against docs/algorithms.md section 4, exact wire sizes,
// edge cases, and refusal of malformed payloads.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/codec.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

v1::EncodingParams Qsgd(uint32_t bits, uint32_t bucket = 512, uint64_t seed = 1,
                        v1::QuantScaling scaling = v1::QUANT_SCALING_MAX_ABS) {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_QSGD);
  p.set_bits(bits);
  p.set_bucket_size(bucket);
  p.set_seed(seed);
  p.set_scaling(scaling);
  return p;
}

std::vector<float> Gaussian(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<float> RoundTrip(const v1::EncodingParams& p, const std::vector<float>& v) {
  auto payload = Encode(p, v);
  EXPECT_TRUE(payload.ok()) << payload.status();
  std::vector<float> out(v.size());
  EXPECT_TRUE(Decode(p, *payload, absl::MakeSpan(out)).ok());
  return out;
}

float MaxAbs(const std::vector<float>& v, size_t begin, size_t end) {
  float m = 0;
  for (size_t i = begin; i < end; ++i) m = std::max(m, std::abs(v[i]));
  return m;
}

// Mean of many decodes converges to the input: each coordinate's mean over T independent decodes
// has standard deviation at most (m / s) / (2 sqrt(T)) (stochastic rounding between two levels
// m/s apart has variance <= (m/s)^2 / 4), so 6 of those bound every coordinate with room to spare.
TEST(Qsgd, IsUnbiasedForEveryBitWidth) {
  const std::vector<float> v = Gaussian(700, 3);  // two buckets of 512, the second short
  const int trials = 2000;
  for (uint32_t bits = 2; bits <= 8; ++bits) {
    std::vector<double> mean(v.size(), 0.0);
    for (int t = 0; t < trials; ++t) {
      const std::vector<float> d = RoundTrip(Qsgd(bits, 512, 1000 + t), v);
      for (size_t i = 0; i < v.size(); ++i) mean[i] += d[i] / trials;
    }
    const double s = (1 << (bits - 1)) - 1;
    for (size_t i = 0; i < v.size(); ++i) {
      const double m = MaxAbs(v, i < 512 ? 0 : 512, i < 512 ? 512 : v.size());
      const double sigma = (m / s) / (2.0 * std::sqrt(trials));
      ASSERT_NEAR(mean[i], v[i], 6.0 * sigma) << "bits " << bits << " coordinate " << i;
    }
  }
}

// E||Q(v) - v||^2 per bucket <= B m^2 / (4 s^2) with max-abs scaling.
TEST(Qsgd, VarianceStaysUnderTheMaxAbsBound) {
  const std::vector<float> v = Gaussian(512, 5);
  const double m = MaxAbs(v, 0, 512);
  for (uint32_t bits = 2; bits <= 8; ++bits) {
    const double s = (1 << (bits - 1)) - 1;
    double sq = 0.0;
    const int trials = 200;
    for (int t = 0; t < trials; ++t) {
      const std::vector<float> d = RoundTrip(Qsgd(bits, 512, t), v);
      for (size_t i = 0; i < v.size(); ++i) sq += (d[i] - v[i]) * (d[i] - v[i]) / trials;
    }
    EXPECT_LE(sq, 512 * m * m / (4 * s * s)) << "bits " << bits;
    EXPECT_GT(sq, 0.0);
  }
}

// With 2-norm scaling, QSGD's bound: min(B / s^2, sqrt(B) / s) ||v||^2.
TEST(Qsgd, VarianceStaysUnderTheL2Bound) {
  const std::vector<float> v = Gaussian(512, 6);
  double norm2 = 0;
  for (float x : v) norm2 += double{x} * x;
  for (uint32_t bits : {2u, 4u, 8u}) {
    const double s = (1 << (bits - 1)) - 1;
    double sq = 0.0;
    const int trials = 200;
    for (int t = 0; t < trials; ++t) {
      const std::vector<float> d = RoundTrip(Qsgd(bits, 512, t, v1::QUANT_SCALING_L2), v);
      for (size_t i = 0; i < v.size(); ++i) sq += (d[i] - v[i]) * (d[i] - v[i]) / trials;
    }
    EXPECT_LE(sq, std::min(512 / (s * s), std::sqrt(512.0) / s) * norm2) << "bits " << bits;
  }
}

TEST(Qsgd, WireSizeIsScalesPlusPackedCodesForEveryWidthAndLength) {
  for (uint32_t bits = 2; bits <= 8; ++bits) {
    for (size_t n : {1u, 7u, 9u, 511u, 512u, 513u, 1000u, 4099u}) {
      const std::vector<float> v = Gaussian(n, n);
      auto payload = Encode(Qsgd(bits), v);
      ASSERT_TRUE(payload.ok());
      const size_t expected = 4 * ((n + 511) / 512) + (n * bits + 7) / 8;
      EXPECT_EQ(payload->size(), expected) << "bits " << bits << " n " << n;
      EXPECT_EQ(*EncodedSize(Qsgd(bits), n), expected);
    }
  }
  // The example of the issue: 4 bits, n floats -> 4 bytes per bucket + n/2 bytes.
  EXPECT_EQ(*EncodedSize(Qsgd(4), 1 << 20), 4u * 2048 + (1u << 19));
}

TEST(Qsgd, AllZeroBucketsDecodeToZeros) {
  std::vector<float> v(1024, 0.0f);
  v[700] = 2.0f;  // the second bucket is not zero
  const std::vector<float> d = RoundTrip(Qsgd(4), v);
  for (size_t i = 0; i < 512; ++i) ASSERT_EQ(d[i], 0.0f);
  EXPECT_EQ(d[700], 2.0f) << "the bucket's maximum is a level: exact";
}

TEST(Qsgd, TheBucketMaximumAndASingleCoordinateAreExact) {
  EXPECT_EQ(RoundTrip(Qsgd(2), {-3.5f}), std::vector<float>{-3.5f});
  const std::vector<float> d = RoundTrip(Qsgd(3), {1.0f, -8.0f, 0.0f});
  EXPECT_EQ(d[1], -8.0f);
  EXPECT_EQ(d[2], 0.0f);
}

TEST(Qsgd, HugeTinyAndDenormalMagnitudesStayFiniteAndInScale) {
  for (float scale : {3e38f, 1e-30f, 1e-40f, 1e-45f}) {
    std::vector<float> v = {scale, -scale, scale * 0.5f, 0.0f};
    for (uint32_t bits : {2u, 4u, 8u}) {
      const std::vector<float> d = RoundTrip(Qsgd(bits), v);
      for (size_t i = 0; i < v.size(); ++i) {
        ASSERT_TRUE(std::isfinite(d[i])) << scale;
        ASSERT_LE(std::abs(d[i]), scale) << scale;
      }
      EXPECT_EQ(d[0], scale);
      EXPECT_EQ(d[1], -scale);
    }
  }
}

TEST(Qsgd, TheSameSeedGivesTheSameBytes) {
  const std::vector<float> v = Gaussian(2000, 1);
  EXPECT_EQ(*Encode(Qsgd(4, 512, 42), v), *Encode(Qsgd(4, 512, 42), v));
  EXPECT_NE(*Encode(Qsgd(4, 512, 42), v), *Encode(Qsgd(4, 512, 43), v));
}

TEST(Qsgd, NaNOrInfAtTheEncoderIsAnError) {
  EXPECT_EQ(Encode(Qsgd(4), {1.0f, std::nanf("")}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Encode(Qsgd(4), {std::numeric_limits<float>::infinity()}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Qsgd, BadParametersAreRefused) {
  EXPECT_EQ(ValidateEncodingParams(Qsgd(1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateEncodingParams(Qsgd(9)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateEncodingParams(Qsgd(4, 0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateEncodingParams(Qsgd(4, (1 << 20) + 1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateEncodingParams(Qsgd(4, 512, 1, static_cast<v1::QuantScaling>(9))).code(),
            absl::StatusCode::kInvalidArgument);
}

class MalformedQsgd : public ::testing::Test {
 protected:
  void ExpectRefused(const v1::EncodingParams& p, const std::string& payload) {
    std::vector<float> out(n_, 7.0f);
    EXPECT_EQ(DecodeAccumulate(p, payload, 1.0f, absl::MakeSpan(out)).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(out, std::vector<float>(n_, 7.0f)) << "a refused payload changed the output";
  }
  const size_t n_ = 1000;
  const std::string good_ = *Encode(Qsgd(4), Gaussian(1000, 2));
};

TEST_F(MalformedQsgd, TruncatedIsRefused) {
  ExpectRefused(Qsgd(4), good_.substr(0, good_.size() - 1));
}
TEST_F(MalformedQsgd, OversizedIsRefused) { ExpectRefused(Qsgd(4), good_ + "x"); }
TEST_F(MalformedQsgd, WrongBitsAreRefused) {
  ExpectRefused(Qsgd(5), good_);
  ExpectRefused(Qsgd(3), good_);
}
TEST_F(MalformedQsgd, WrongBucketIsRefused) { ExpectRefused(Qsgd(4, 256), good_); }
TEST_F(MalformedQsgd, ANaNOrNegativeScaleIsRefused) {
  std::string bad = good_;
  const float nan = std::nanf("");
  std::memcpy(bad.data() + 4, &nan, 4);
  ExpectRefused(Qsgd(4), bad);
  const float negative = -1.0f;
  bad = good_;
  std::memcpy(bad.data(), &negative, 4);
  ExpectRefused(Qsgd(4), bad);
}

TEST(ScaledSign, DecodesToTheBucketMeanMagnitudeWithTheSign) {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_SIGN);
  p.set_bucket_size(4);
  const std::vector<float> v = {1.0f, -3.0f, 2.0f, 0.0f, -5.0f};
  auto payload = Encode(p, v);
  ASSERT_TRUE(payload.ok());
  EXPECT_EQ(payload->size(), 2u * 4 + 1);
  std::vector<float> d(v.size());
  ASSERT_TRUE(Decode(p, *payload, absl::MakeSpan(d)).ok());
  EXPECT_EQ(d, (std::vector<float>{1.5f, -1.5f, 1.5f, 1.5f, -5.0f}));
}

TEST(DecodeAccumulate, AddsTheWeightedDecodeIntoFloatAndDoubleBuffers) {
  const std::vector<float> v = Gaussian(1000, 9);
  const auto payload = *Encode(Qsgd(6), v);
  std::vector<float> decoded(v.size());
  ASSERT_TRUE(Decode(Qsgd(6), payload, absl::MakeSpan(decoded)).ok());
  std::vector<float> f(v.size(), 1.0f);
  std::vector<double> d(v.size(), 1.0);
  ASSERT_TRUE(DecodeAccumulate(Qsgd(6), payload, 0.5f, absl::MakeSpan(f)).ok());
  ASSERT_TRUE(DecodeAccumulate(Qsgd(6), payload, 0.5, absl::MakeSpan(d)).ok());
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_NEAR(f[i], 1.0f + 0.5f * decoded[i], 1e-6);
    EXPECT_NEAR(d[i], 1.0 + 0.5 * decoded[i], 1e-6);
  }
}

}  // namespace
}  // namespace ps
