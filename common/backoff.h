// Exponential backoff with jitter, for retrying UNAVAILABLE calls without a thundering herd.
#ifndef PS_COMMON_BACKOFF_H_
#define PS_COMMON_BACKOFF_H_

#include <cstdint>
#include <random>

#include "absl/time/time.h"

namespace ps {

struct BackoffOptions {
  absl::Duration initial = absl::Milliseconds(100);
  absl::Duration max = absl::Seconds(5);
  double multiplier = 2.0;
  double jitter = 0.2;  // each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
};

// Not thread-safe: one per retry loop.
class Backoff {
 public:
  explicit Backoff(const BackoffOptions& options, uint64_t seed = std::random_device{}())
      : options_(options), next_(options.initial), rng_(seed) {}

  // The delay before the next attempt; grows geometrically up to options.max.
  absl::Duration NextDelay();
  void Reset() { next_ = options_.initial; }

 private:
  BackoffOptions options_;
  absl::Duration next_;
  std::mt19937_64 rng_;
};

}  // namespace ps

#endif  // PS_COMMON_BACKOFF_H_
