// The server-side outer optimizer (docs/algorithms.md section 8): what a shard does with the
// average change of a sync round, or with each async update. Plain averaging is the default and
// keeps no state; the others keep per-coordinate buffers that checkpoints save and restore bit for
// bit. Knows nothing of gRPC or of rounds: the aggregator calls it with the numbers.
#ifndef PS_SERVER_OUTER_OPTIMIZER_H_
#define PS_SERVER_OUTER_OPTIMIZER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ps {

enum class OuterKind {
  kAverage,          // x += D_avg (async: x += w D_k)
  kSgd,              // outer SGD with momentum on the pseudo-gradient -D_avg, optionally Nesterov
  kSlowMo,           // SlowMo: momentum on -D_avg / inner_lr
  kFedAdam,          // FedAdam on D_avg
  kDelayedNesterov,  // async: a Nesterov momentum step every `period` updates
};

struct OuterOptimizerOptions {
  OuterKind kind = OuterKind::kAverage;
  double lr = 1.0;        // SGD, FedAdam, delayed Nesterov: eta; SlowMo: alpha
  double momentum = 0.0;  // SGD, delayed Nesterov: mu; SlowMo: beta
  bool nesterov = false;  // SGD
  double beta1 = 0.9, beta2 = 0.99, tau = 1e-9;  // FedAdam
  int period = 1;                                // delayed Nesterov: updates per momentum step (N)
};

// The defaults of each rule: nesterov and sgd lr 0.7, momentum 0.9 (DiLoCo's); slowmo alpha 1,
// beta 0.5; fedadam lr 0.1, betas 0.9 and 0.99, tau 1e-9; delayed_nesterov lr 1, momentum 0.9.
// "nesterov" is sgd with nesterov set.
OuterOptimizerOptions DefaultOuterOptions(absl::string_view name);

// Parses --outer_optimizer's names: average, sgd, nesterov, slowmo, fedadam, delayed_nesterov.
absl::StatusOr<OuterKind> ParseOuterKind(absl::string_view name);
std::string OuterKindName(OuterKind kind);
// INVALID_ARGUMENT naming the bad setting (a sync-only rule in async mode, say).
absl::Status ValidateOuterOptions(const OuterOptimizerOptions& options, bool sync);

// Not thread-safe: the aggregator calls it under its lock.
class OuterOptimizer {
 public:
  OuterOptimizer(const OuterOptimizerOptions& options, size_t size);

  // A sync round: `average_then_next[i]` holds the round's average change D_avg (what plain
  // averaging adds) and is overwritten with the next model's coordinate, computed from `model`;
  // `inner_lr` is the workers' step size in the round (SlowMo). Returns the largest |next[i]|.
  float ApplyRound(absl::Span<const float> model, absl::Span<float> average_then_next,
                   double inner_lr);
  // An async update: model += weight * D (plain rule), or the delayed-Nesterov rule with
  // g = -weight * D. `update` holds D.
  void ApplyUpdate(absl::Span<float> model, absl::Span<const float> update, float weight);

  const OuterOptimizerOptions& options() const { return options_; }
  bool has_state() const { return !buffers_.empty(); }
  // The state a checkpoint keeps: the steps taken and every buffer (d floats each).
  uint64_t steps() const { return steps_; }
  const std::vector<std::vector<float>>& buffers() const { return buffers_; }
  // INVALID_ARGUMENT unless the buffers are the ones this optimizer keeps.
  absl::Status Restore(uint64_t steps, std::vector<std::vector<float>> buffers);

 private:
  OuterOptimizerOptions options_;
  uint64_t steps_ = 0;  // rounds (sync) or updates (async) applied
  // kSgd / kSlowMo: {b}; kFedAdam: {m, v}; kDelayedNesterov: {m, acc}.
  std::vector<std::vector<float>> buffers_;
};

}  // namespace ps

#endif  // PS_SERVER_OUTER_OPTIMIZER_H_
