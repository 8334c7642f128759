#include "client/compression.h"

#include <cmath>
#include <random>

#include "common/codec.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

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
