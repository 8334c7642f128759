// Learning-rate schedules. docs/algorithms.md section 1: the step size at global step t follows the
// same schedule as single-node SGD. Workers use it for their local steps and, in gradient mode, the
// server for its own steps. Plain values; thread-compatible.
#ifndef PS_COMMON_STEP_SIZE_H_
#define PS_COMMON_STEP_SIZE_H_

#include <cstdint>

#include "ps/v1/ps.pb.h"

namespace ps {

struct StepSchedule {
  v1::LearningRateSchedule kind = v1::LEARNING_RATE_SCHEDULE_CONSTANT;
  float base = 0.1f;
  float decay = 0.0f;        // inverse_time: base / (1 + decay t)
  uint64_t total_steps = 0;  // cosine: base (1 + cos(pi t / total)) / 2; 0 = constant

  // The step size at global step t (fractional in async gradient mode: t counts rounds of K
  // updates). Past total_steps, cosine stays at 0.
  float At(double t) const;
};

}  // namespace ps

#endif  // PS_COMMON_STEP_SIZE_H_
