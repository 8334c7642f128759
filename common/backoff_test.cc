#include "common/backoff.h"

#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(Backoff, GrowsGeometricallyWithinTheJitterAndStopsAtTheMaximum) {
  BackoffOptions options;
  options.initial = absl::Milliseconds(100);
  options.max = absl::Milliseconds(1000);
  options.multiplier = 2.0;
  options.jitter = 0.2;
  Backoff backoff(options, /*seed=*/7);
  const double expected_ms[] = {100, 200, 400, 800, 1000, 1000};
  for (double e : expected_ms) {
    const double got = absl::ToDoubleMilliseconds(backoff.NextDelay());
    EXPECT_GE(got, 0.8 * e);
    EXPECT_LE(got, 1.2 * e);
  }
  backoff.Reset();
  EXPECT_LE(absl::ToDoubleMilliseconds(backoff.NextDelay()), 120.0);
}

}  // namespace
}  // namespace ps
