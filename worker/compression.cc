#include "worker/compression.h"

#include <algorithm>
#include <cmath>

#include "common/codec.h"

namespace ps {

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

UpdateCompressor::UpdateCompressor(const v1::TrainingConfig& config, size_t size, uint64_t seed)
    : base_(config.update_encoding()),
      policy_(config.bits_policy()),
      error_feedback_(config.error_feedback() && base_.encoding() != v1::ENCODING_FP32),
      seed_(seed) {
  if (base_.encoding() == v1::ENCODING_UNSPECIFIED) base_.set_encoding(v1::ENCODING_FP32);
  dq_.min_bits = std::max(2u, config.min_bits());
  dq_.max_bits = std::min(8u, std::max(dq_.min_bits, config.max_bits()));
  if (config.dq_beta() > 0) dq_.beta = config.dq_beta();
  if (config.dq_alpha() > 0) dq_.alpha = config.dq_alpha();
  dq_.variance_constant = std::max(1u, base_.bucket_size()) / 4.0;
  if (error_feedback_) residual_.assign(size, 0.0f);
}

void UpdateCompressor::ResetResidual() { std::fill(residual_.begin(), residual_.end(), 0.0f); }

absl::Status UpdateCompressor::Compress(absl::Span<const float> update, uint64_t n, uint64_t total,
                                        v1::EncodingParams* params, std::string* payload) {
  absl::Span<const float> input = update;
  if (error_feedback_) {
    corrected_.resize(update.size());
    for (size_t i = 0; i < update.size(); ++i) corrected_[i] = update[i] + residual_[i];
    input = corrected_;
  }
  *params = base_;
  if (base_.encoding() == v1::ENCODING_QSGD) {
    // Each message its own seed: reproducible runs, independent rounding between messages.
    params->set_seed(seed_ * 0x9E3779B97F4A7C15ull + n);
    if (policy_ == v1::BITS_POLICY_DQSGD) {
      double norm2 = 0.0;
      for (float v : input) norm2 += double{v} * v;
      const double norm = std::sqrt(norm2);
      if (reference_count_ < dq_.reference_messages) {
        reference_norm_sum_ += norm;
        ++reference_count_;
      }
      params->set_bits(DqSgdBits(dq_, norm, reference_norm_sum_ / reference_count_, n, total));
    }
  }
  last_bits_ = base_.encoding() == v1::ENCODING_QSGD   ? params->bits()
               : base_.encoding() == v1::ENCODING_SIGN ? 1
                                                       : 32;
  if (absl::Status s = EncodeInto(*params, input, payload); !s.ok()) return s;
  if (error_feedback_) {
    decoded_.resize(input.size());
    if (absl::Status s = Decode(*params, *payload, absl::MakeSpan(decoded_)); !s.ok()) return s;
    for (size_t i = 0; i < input.size(); ++i) residual_[i] = input[i] - decoded_[i];
  }
  return absl::OkStatus();
}

}  // namespace ps
