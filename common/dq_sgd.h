// DQ-SGD's dynamic bit width (docs/algorithms.md section 7), for any stream of quantized messages:
// a worker's updates, and the server's deltas of the broadcast model on the downlink.
#ifndef PS_COMMON_DQ_SGD_H_
#define PS_COMMON_DQ_SGD_H_

#include <cstdint>

#include "ps/v1/ps.pb.h"

namespace ps {

struct DqSgdOptions {
  uint32_t min_bits = 2;
  uint32_t max_bits = 8;
  double beta = 4.0;   // relative error budget
  double alpha = 1.0;  // contraction per message (1: non-convex, bits follow the norm only)
  double variance_constant = 128.0;  // c in V <= c ||g||^2 / s^2: bucket / 4 for max-abs scaling
  int reference_messages = 5;        // ||g_ref|| = mean norm of the first messages
};

// The options a TrainingConfig sets (min/max bits, dq_beta, dq_alpha) for QSGD buckets of
// `bucket_size` coordinates.
DqSgdOptions DqSgdOptionsFromConfig(const v1::TrainingConfig& config, uint32_t bucket_size);

// DQ-SGD's bit width for message n of N (with Bq = beta N ||g_ref||^2):
//   s = ceil(sqrt(alpha^(N-1-n) * c * ||g||^2 / (beta * ||g_ref||^2))),  b = 1 + ceil(log2(s + 1)),
// clamped to [min_bits, max_bits].
uint32_t DqSgdBits(const DqSgdOptions& options, double norm, double reference_norm, uint64_t n,
                   uint64_t total);

// Chooses the bits of each message of one stream: the reference norm is the mean norm of the
// stream's first messages. Not thread-safe; one per stream.
class DqSgdBitChooser {
 public:
  explicit DqSgdBitChooser(const DqSgdOptions& options) : options_(options) {}
  // Message n of total (total 0: unknown, as on the downlink; then alpha plays no part).
  uint32_t Choose(double norm, uint64_t n, uint64_t total);

 private:
  DqSgdOptions options_;
  double reference_norm_sum_ = 0.0;
  int reference_count_ = 0;
};

}  // namespace ps

#endif  // PS_COMMON_DQ_SGD_H_
