#include "common/step_size.h"

#include <cmath>

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(StepSchedule, FollowsEachSchedule) {
  StepSchedule s;
  s.base = 0.4f;
  s.kind = v1::LEARNING_RATE_SCHEDULE_CONSTANT;
  EXPECT_FLOAT_EQ(s.At(1000), 0.4f);
  s.kind = v1::LEARNING_RATE_SCHEDULE_INVERSE_TIME;
  s.decay = 0.01f;
  EXPECT_FLOAT_EQ(s.At(100), 0.2f);
  s.kind = v1::LEARNING_RATE_SCHEDULE_COSINE;
  s.total_steps = 100;
  EXPECT_FLOAT_EQ(s.At(0), 0.4f);
  EXPECT_NEAR(s.At(50), 0.2f, 1e-6);
  EXPECT_NEAR(s.At(12.5), 0.2f * (1 + std::cos(M_PI / 8)), 1e-6);
  EXPECT_NEAR(s.At(100), 0.0f, 1e-6);
  EXPECT_NEAR(s.At(150), 0.0f, 1e-6) << "past the end it stays at 0";
  s.total_steps = 0;
  EXPECT_FLOAT_EQ(s.At(50), 0.4f) << "cosine over an unknown length is constant";
}

}  // namespace
}  // namespace ps
