#include "worker/compression.h"

#include <cmath>
#include <random>

#include "common/codec.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(DqSgdBits, FollowsTheFormulaForTheNorm) {
  DqSgdOptions o;  // c = 128, beta = 4, alpha = 1, bits in [2, 8]
  // ratio 1: s = ceil(sqrt(128 / 4)) = 6, b = 1 + ceil(log2 7) = 4.
  EXPECT_EQ(DqSgdBits(o, 1.0, 1.0, 0, 100), 4u);
  // ratio 2: s = ceil(sqrt(128 * 4 / 4)) = 12, b = 1 + ceil(log2 13) = 5.
  EXPECT_EQ(DqSgdBits(o, 2.0, 1.0, 0, 100), 5u);
  // ratio 1/2: s = ceil(sqrt(8)) = 3, b = 1 + ceil(log2 4) = 3.
  EXPECT_EQ(DqSgdBits(o, 0.5, 1.0, 0, 100), 3u);
  EXPECT_EQ(DqSgdBits(o, 100.0, 1.0, 0, 100), 8u) << "clamped to max_bits";
  EXPECT_EQ(DqSgdBits(o, 0.01, 1.0, 0, 100), 2u) << "clamped to min_bits";
}

TEST(DqSgdBits, GivesMoreBitsAsTheNormGrowsAndAsStepsRunOut) {
  DqSgdOptions o;
  o.alpha = 0.99;
  uint32_t previous = 0;
  for (double norm = 0.1; norm < 20; norm *= 1.5) {
    const uint32_t b = DqSgdBits(o, norm, 1.0, 999, 1000);
    EXPECT_GE(b, previous);
    previous = b;
  }
  EXPECT_EQ(previous, 8u);
  previous = 0;
  for (uint64_t n = 0; n < 1000; n += 50) {
    const uint32_t b = DqSgdBits(o, 1.0, 1.0, n, 1000);
    EXPECT_GE(b, previous) << "message " << n;
    previous = b;
  }
  // alpha^(N-1-n): 0.99^999 = 4.3e-5 at the start gives s = 1 -> 2 bits; at the end 4 bits.
  EXPECT_EQ(DqSgdBits(o, 1.0, 1.0, 0, 1000), 2u);
  EXPECT_EQ(DqSgdBits(o, 1.0, 1.0, 999, 1000), 4u);
}

v1::TrainingConfig QsgdConfig(uint32_t bits, bool error_feedback,
                              v1::BitsPolicy policy = v1::BITS_POLICY_FIXED) {
  v1::TrainingConfig c;
  c.mutable_update_encoding()->set_encoding(v1::ENCODING_QSGD);
  c.mutable_update_encoding()->set_bits(bits);
  c.mutable_update_encoding()->set_bucket_size(64);
  c.mutable_update_encoding()->set_scaling(v1::QUANT_SCALING_MAX_ABS);
  c.set_bits_policy(policy);
  c.set_min_bits(2);
  c.set_max_bits(8);
  c.set_error_feedback(error_feedback);
  return c;
}

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(ErrorFeedback, WhatWasSentPlusTheResidualIsWhatCameIn) {
  const size_t d = 300;
  UpdateCompressor compressor(QsgdConfig(2, /*error_feedback=*/true), d, 7);
  std::vector<double> inputs(d, 0.0), sent(d, 0.0);
  for (uint64_t n = 0; n < 50; ++n) {
    const std::vector<float> update = Random(d, n);
    v1::EncodingParams params;
    std::string payload;
    ASSERT_TRUE(compressor.Compress(update, n, 50, &params, &payload).ok());
    std::vector<float> decoded(d);
    ASSERT_TRUE(Decode(params, payload, absl::MakeSpan(decoded)).ok());
    for (size_t i = 0; i < d; ++i) {
      inputs[i] += update[i];
      sent[i] += decoded[i];
    }
  }
  for (size_t i = 0; i < d; ++i) {
    // Float rounding of 50 additions of O(1) values: 1e-4 is generous and still far below the
    // size of a single 2-bit quantization error (about 0.5).
    ASSERT_NEAR(sent[i] + compressor.residual()[i], inputs[i], 1e-4) << "coordinate " << i;
  }
  compressor.ResetResidual();
  for (float r : compressor.residual()) ASSERT_EQ(r, 0.0f);
}

TEST(UpdateCompressor, FixedPolicyUsesTheConfiguredBitsAndAFreshSeedPerMessage) {
  UpdateCompressor compressor(QsgdConfig(4, false), 1000, 3);
  v1::EncodingParams a, b;
  std::string pa, pb;
  const std::vector<float> v = Random(1000, 1);
  ASSERT_TRUE(compressor.Compress(v, 0, 10, &a, &pa).ok());
  ASSERT_TRUE(compressor.Compress(v, 1, 10, &b, &pb).ok());
  EXPECT_EQ(a.bits(), 4u);
  EXPECT_EQ(pa.size(), *EncodedSize(a, 1000));
  EXPECT_NE(a.seed(), b.seed());
  EXPECT_EQ(compressor.last_bits(), 4u);
}

TEST(UpdateCompressor, DqSgdPolicyFollowsTheNormAgainstTheFirstMessages) {
  UpdateCompressor compressor(QsgdConfig(4, false, v1::BITS_POLICY_DQSGD), 640, 3);
  v1::EncodingParams params;
  std::string payload;
  const std::vector<float> v = Random(640, 2);
  for (uint64_t n = 0; n < 5; ++n)
    ASSERT_TRUE(compressor.Compress(v, n, 100, &params, &payload).ok());
  // Bucket 64: c = 16; ratio 1 -> s = ceil(sqrt(16 / 4)) = 2 -> b = 1 + ceil(log2 3) = 3.
  EXPECT_EQ(params.bits(), 3u);
  std::vector<float> big = v;
  for (float& x : big) x *= 8;
  ASSERT_TRUE(compressor.Compress(big, 5, 100, &params, &payload).ok());
  // ratio 8 -> s = ceil(sqrt(16 * 64 / 4)) = 16 -> b = 1 + ceil(log2 17) = 6.
  EXPECT_EQ(params.bits(), 6u);
  EXPECT_EQ(payload.size(), *EncodedSize(params, 640));
}

}  // namespace
}  // namespace ps
