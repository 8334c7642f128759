#include "client/compression.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/status_macros.h"

namespace ps {

UpdateCompressor::UpdateCompressor(const v1::TrainingConfig& config, size_t size, uint64_t seed)
    : base_(config.update_encoding()),
      policy_(config.bits_policy()),
      dq_(DqSgdOptionsFromConfig(config, config.update_encoding().bucket_size())),
      error_feedback_(config.error_feedback() && base_.encoding() != v1::ENCODING_FP32),
      seed_(seed) {
  if (base_.encoding() == v1::ENCODING_UNSPECIFIED) base_.set_encoding(v1::ENCODING_FP32);
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
      params->set_bits(dq_.Choose(std::sqrt(norm2), n, total));
    }
  }
  last_bits_ = base_.encoding() == v1::ENCODING_QSGD   ? params->bits()
               : base_.encoding() == v1::ENCODING_SIGN ? 1
               : base_.encoding() == v1::ENCODING_FP16 || base_.encoding() == v1::ENCODING_BF16
                   ? 16
                   : 32;
  if (absl::Status s = EncodeInto(*params, input, payload); !s.ok()) return s;
  if (error_feedback_) {
    decoded_.resize(input.size());
    if (absl::Status s = Decode(*params, *payload, absl::MakeSpan(decoded_)); !s.ok()) return s;
    for (size_t i = 0; i < input.size(); ++i) residual_[i] = input[i] - decoded_[i];
  }
  return absl::OkStatus();
}

absl::Status ApplyOverrides(const CompressionOverrides& overrides, v1::TrainingConfig* config) {
  v1::EncodingParams* update = config->mutable_update_encoding();
  if (!overrides.update_encoding.empty()) {
    PS_ASSIGN_OR_RETURN(v1::Encoding encoding, ParseEncoding(overrides.update_encoding));
    const auto& allowed = config->allowed_encodings();
    if (std::find(allowed.begin(), allowed.end(), encoding) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the server does not allow update encoding ", overrides.update_encoding));
    }
    update->set_encoding(encoding);
  }
  if (update->encoding() != v1::ENCODING_FP32 && update->bucket_size() == 0) {
    update->set_bucket_size(512);
  }
  if (update->encoding() == v1::ENCODING_QSGD &&
      update->scaling() == v1::QUANT_SCALING_UNSPECIFIED) {
    update->set_scaling(v1::QUANT_SCALING_MAX_ABS);
  }
  if (overrides.bits > 0) update->set_bits(overrides.bits);
  if (update->encoding() == v1::ENCODING_QSGD && update->bits() == 0) update->set_bits(4);
  if (overrides.bits_policy == "fixed") {
    config->set_bits_policy(v1::BITS_POLICY_FIXED);
  } else if (overrides.bits_policy == "dqsgd") {
    config->set_bits_policy(v1::BITS_POLICY_DQSGD);
  } else if (!overrides.bits_policy.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bits_policy=", overrides.bits_policy, " is not one of: fixed, dqsgd"));
  }
  if (config->min_bits() == 0) config->set_min_bits(2);
  if (config->max_bits() == 0) config->set_max_bits(8);
  if (update->encoding() == v1::ENCODING_UNSPECIFIED) update->set_encoding(v1::ENCODING_FP32);
  return ValidateEncodingParams(*update);
}

}  // namespace ps
