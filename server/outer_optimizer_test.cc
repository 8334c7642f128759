// Each outer optimizer's rule, one or two rounds computed by hand (docs/algorithms.md section 8).
#include "server/outer_optimizer.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace ps {
namespace {

// One round of a one-coordinate model: the round's average change is `average`.
float Round(OuterOptimizer* optimizer, float x, double average, double inner_lr = 0.1) {
  const std::vector<float> model = {x};
  std::vector<float> mean_then_next = {static_cast<float>(average)};
  optimizer->ApplyRound(model, absl::MakeSpan(mean_then_next), inner_lr);
  return mean_then_next[0];
}

TEST(OuterOptimizer, AveragingAddsTheAverageBitForBit) {
  OuterOptimizer average(OuterOptimizerOptions{}, 3);
  std::vector<float> model = {1.0f, -2.0f, 0.1f};
  std::vector<float> expected = model;
  std::vector<float> mean = {0.1f, 1e-8f / 3, -7.0f / 3};
  for (size_t i = 0; i < 3; ++i) expected[i] += mean[i];
  const float max_abs = average.ApplyRound(model, absl::MakeSpan(mean), 0.1);
  EXPECT_EQ(mean, expected);
  EXPECT_FLOAT_EQ(max_abs, std::abs(expected[2]));
  EXPECT_FALSE(average.has_state());
}

TEST(OuterOptimizer, SgdWithLearningRateOneAndNoMomentumIsAveraging) {
  OuterOptimizerOptions o;
  o.kind = OuterKind::kSgd;
  o.lr = 1.0;
  o.momentum = 0.0;
  OuterOptimizer sgd(o, 1);
  OuterOptimizer average(OuterOptimizerOptions{}, 1);
  float a = 1.0f, b = 1.0f;
  for (double d : {0.5, -0.25, 0.125}) {
    a = Round(&sgd, a, d);
    b = Round(&average, b, d);
  }
  EXPECT_EQ(a, b);
}

TEST(OuterOptimizer, NesterovAsDiLoCoByHand) {
  OuterOptimizer nesterov(DefaultOuterOptions("nesterov"), 1);  // lr 0.7, momentum 0.9
  // Round 1: g = -0.5, b = g = -0.5, step = g + 0.9 b = -0.95; x = 1 + 0.7 * 0.95 = 1.665.
  const float x1 = Round(&nesterov, 1.0f, 0.5);
  EXPECT_FLOAT_EQ(x1, 1.665f);
  // Round 2: g = -0.25, b = 0.9 * -0.5 - 0.25 = -0.7, step = -0.25 - 0.63 = -0.88; x += 0.616.
  EXPECT_FLOAT_EQ(Round(&nesterov, x1, 0.25), 1.665f + 0.616f);
  EXPECT_EQ(nesterov.steps(), 2u);
  EXPECT_FLOAT_EQ(nesterov.buffers()[0][0], -0.7f);
  // Without Nesterov: x -= lr b.
  OuterOptimizer plain(DefaultOuterOptions("sgd"), 1);
  EXPECT_FLOAT_EQ(Round(&plain, 1.0f, 0.5), 1.0f + 0.7f * 0.5f);
}

TEST(OuterOptimizer, SlowMoDividesByTheInnerLearningRate) {
  OuterOptimizer slowmo(DefaultOuterOptions("slowmo"), 1);  // alpha 1, beta 0.5
  // gamma 0.1. Round 1: buf = -0.5 / 0.1 = -5, x -= 1 * 0.1 * -5 -> 1.5.
  const float x1 = Round(&slowmo, 1.0f, 0.5, 0.1);
  EXPECT_FLOAT_EQ(x1, 1.5f);
  // Round 2, gamma 0.05: buf = 0.5 * -5 - 0.25 / 0.05 = -7.5, x -= 0.05 * -7.5 = +0.375.
  EXPECT_FLOAT_EQ(Round(&slowmo, x1, 0.25, 0.05), 1.875f);
}

TEST(OuterOptimizer, FedAdamByHand) {
  OuterOptimizer adam(DefaultOuterOptions("fedadam"), 1);  // lr 0.1, 0.9, 0.99, 1e-9
  // Round 1: m = 0.05, v = 0.0025, eta_1 = 0.1 sqrt(0.01) / 0.1 = 0.1; x += 0.1 * 0.05 / 0.05.
  const float x1 = Round(&adam, 1.0f, 0.5);
  EXPECT_NEAR(x1, 1.1f, 1e-6);
  // Round 2, d = 0.5: m = 0.095, v = 0.004975, eta_2 = 0.1 sqrt(1 - 0.99^2) / (1 - 0.81).
  const double eta2 = 0.1 * std::sqrt(1 - 0.99 * 0.99) / (1 - 0.9 * 0.9);
  EXPECT_NEAR(Round(&adam, x1, 0.5), x1 + eta2 * 0.095 / std::sqrt(0.004975), 1e-6);
}

TEST(OuterOptimizer, DelayedNesterovStepsItsMomentumEveryPeriod) {
  OuterOptimizerOptions o = DefaultOuterOptions("delayed_nesterov");
  o.momentum = 0.5;
  o.period = 2;
  OuterOptimizer delayed(o, 1);
  std::vector<float> x = {1.0f};
  const std::vector<float> d = {1.0f};
  // Update 1: g = -1, x += 1 * 1 / 2 -> 1.5, acc = -1.
  delayed.ApplyUpdate(absl::MakeSpan(x), d, 1.0f);
  EXPECT_FLOAT_EQ(x[0], 1.5f);
  // Update 2: x -> 2, acc = -2; period reached: m = -2 / 2 = -1, x -= 0.5 * -1 -> 2.5.
  delayed.ApplyUpdate(absl::MakeSpan(x), d, 1.0f);
  EXPECT_FLOAT_EQ(x[0], 2.5f);
  EXPECT_FLOAT_EQ(delayed.buffers()[1][0], 0.0f) << "the accumulator starts over";
}

TEST(OuterOptimizer, StateRestoresAndOnlyItsOwn) {
  OuterOptimizer a(DefaultOuterOptions("nesterov"), 2);
  std::vector<float> x = {1.0f, 2.0f};
  const std::vector<float> sum = {0.5f, -0.5f};
  std::vector<float> next = sum;
  a.ApplyRound(x, absl::MakeSpan(next), 0.1);
  x = next;
  OuterOptimizer b(DefaultOuterOptions("nesterov"), 2);
  ASSERT_TRUE(b.Restore(a.steps(), a.buffers()).ok());
  std::vector<float> xa = x, xb = x;
  std::vector<float> next_a = sum, next_b = sum;
  a.ApplyRound(xa, absl::MakeSpan(next_a), 0.1);
  b.ApplyRound(xb, absl::MakeSpan(next_b), 0.1);
  EXPECT_EQ(next_a, next_b);
  OuterOptimizer adam(DefaultOuterOptions("fedadam"), 2);
  EXPECT_FALSE(adam.Restore(a.steps(), a.buffers()).ok()) << "one buffer for a two-buffer rule";
}

TEST(OuterOptimizer, SettingsAreChecked) {
  EXPECT_FALSE(ValidateOuterOptions(DefaultOuterOptions("nesterov"), /*sync=*/false).ok());
  EXPECT_FALSE(ValidateOuterOptions(DefaultOuterOptions("delayed_nesterov"), /*sync=*/true).ok());
  OuterOptimizerOptions o = DefaultOuterOptions("nesterov");
  o.momentum = 1.0;
  EXPECT_FALSE(ValidateOuterOptions(o, true).ok());
  EXPECT_TRUE(ValidateOuterOptions(DefaultOuterOptions("fedadam"), true).ok());
  EXPECT_FALSE(ParseOuterKind("adamw").ok());
}

}  // namespace
}  // namespace ps
