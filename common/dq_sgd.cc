#include "common/dq_sgd.h"

#include <algorithm>
#include <cmath>

namespace ps {

DqSgdOptions DqSgdOptionsFromConfig(const v1::TrainingConfig& config, uint32_t bucket_size) {
  DqSgdOptions o;
  o.min_bits = std::max(2u, config.min_bits());
  o.max_bits = std::min(8u, std::max(o.min_bits, config.max_bits()));
  if (config.dq_beta() > 0) o.beta = config.dq_beta();
  if (config.dq_alpha() > 0) o.alpha = config.dq_alpha();
  o.variance_constant = std::max(1u, bucket_size) / 4.0;
  return o;
}

uint32_t DqSgdBits(const DqSgdOptions& options, double norm, double reference_norm, uint64_t n,
                   uint64_t total) {
  if (!(norm > 0) || !(reference_norm > 0)) return options.min_bits;
  const double steps_left = total > n ? static_cast<double>(total - 1 - n) : 0.0;
  const double ratio = norm / reference_norm;
  const double s = std::ceil(std::sqrt(std::pow(options.alpha, steps_left) *
                                       options.variance_constant * ratio * ratio / options.beta));
  const double bits = 1.0 + std::ceil(std::log2(s + 1.0));
  return static_cast<uint32_t>(std::clamp(bits, static_cast<double>(options.min_bits),
                                          static_cast<double>(options.max_bits)));
}

uint32_t DqSgdBitChooser::Choose(double norm, uint64_t n, uint64_t total) {
  if (reference_count_ < options_.reference_messages) {
    reference_norm_sum_ += norm;
    ++reference_count_;
  }
  return DqSgdBits(options_, norm, reference_norm_sum_ / reference_count_, n, total);
}

}  // namespace ps
