#include "common/dq_sgd.h"

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

TEST(DqSgdBitChooser, MeasuresAgainstTheMeanNormOfTheFirstMessages) {
  DqSgdBitChooser chooser(DqSgdOptions{});  // c = 128, beta = 4: ratio 1 gives 4 bits
  for (double norm : {1.0, 3.0, 2.0, 2.0, 2.0}) chooser.Choose(norm, 0, 0);
  EXPECT_EQ(chooser.Choose(2.0, 0, 0), 4u) << "the reference is the mean of the first five, 2";
  EXPECT_EQ(chooser.Choose(1.0, 0, 0), 3u) << "ratio 1/2";
  EXPECT_EQ(chooser.Choose(200.0, 0, 0), 8u) << "later messages do not move the reference";
}

}  // namespace
}  // namespace ps
