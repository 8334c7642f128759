#include "common/step_size.h"

#include <algorithm>
#include <cmath>

namespace ps {

float StepSchedule::At(double t) const {
  switch (kind) {
    case v1::LEARNING_RATE_SCHEDULE_INVERSE_TIME:
      return base / (1.0f + decay * static_cast<float>(t));
    case v1::LEARNING_RATE_SCHEDULE_COSINE:
      if (total_steps == 0) return base;
      return base * 0.5f *
             (1.0f + std::cos(static_cast<float>(M_PI) *
                              std::min(1.0f, static_cast<float>(t / total_steps))));
    default:
      return base;
  }
}

}  // namespace ps
