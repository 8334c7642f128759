#include "common/backoff.h"

#include <algorithm>

namespace ps {

absl::Duration Backoff::NextDelay() {
  std::uniform_real_distribution<double> jitter(1.0 - options_.jitter, 1.0 + options_.jitter);
  const absl::Duration delay = next_ * jitter(rng_);
  next_ = std::min(next_ * options_.multiplier, options_.max);
  return delay;
}

}  // namespace ps
