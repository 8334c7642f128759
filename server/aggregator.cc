#include "server/aggregator.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/codec.h"

namespace ps {

double StalenessWeight(double tau, double exponent) {
  return tau <= 1.0 ? 1.0 : std::pow(tau, -exponent);
}

Aggregator::Aggregator(const AggregatorOptions& options, ParameterStore* store,
                       Membership* membership)
    : options_(options), store_(store), membership_(membership) {
  if (options_.mode == v1::AGGREGATION_MODE_SYNC) round_sum_.assign(store_->size(), 0.0);
}

absl::StatusOr<SubmitResult> Aggregator::Submit(const Update& update) {
  if (absl::Status s = membership_->Touch(update.worker_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint64_t version = store_->version();
  auto invalid = [this](absl::Status s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++stats_.refused_invalid;
    return s;
  };
  if (update.kind != options_.update_kind) {
    return invalid(absl::InvalidArgumentError(absl::StrFormat(
        "update kind %s does not match the server's %s", v1::UpdateKind_Name(update.kind),
        v1::UpdateKind_Name(options_.update_kind))));
  }
  if (update.sample_count == 0) {
    return invalid(absl::InvalidArgumentError("sample_count must be > 0"));
  }
  auto last = last_sequence_.find(update.worker_id);
  if (last != last_sequence_.end() && update.sequence <= last->second) {
    ++stats_.duplicate;
    return SubmitResult{/*duplicate=*/true, version};
  }
  if (update.base_version > version || update.base_version == 0) {
    return invalid(absl::InvalidArgumentError(absl::StrFormat(
        "base version %d is not a version this server has published (current version %d)",
        update.base_version, version)));
  }
  absl::StatusOr<SubmitResult> result = options_.mode == v1::AGGREGATION_MODE_ASYNC
                                            ? SubmitAsync(update, version)
                                            : SubmitSync(update, version);
  if (result.ok()) {
    last_sequence_[update.worker_id] = update.sequence;
    membership_->CountAcceptedUpdate(update.worker_id);
    ++stats_.applied;
    stats_.last_train_loss = update.train_loss;
  } else if (result.status().code() == absl::StatusCode::kInvalidArgument) {
    ++stats_.refused_invalid;
  } else if (result.status().code() == absl::StatusCode::kFailedPrecondition) {
    ++stats_.refused_stale;
  }
  return result;
}

absl::StatusOr<SubmitResult> Aggregator::SubmitSync(const Update& update, uint64_t version) {
  if (update.base_version < version) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "stale update: built on version %d, but the current version is %d (that round closed); "
        "pull the current model and continue",
        update.base_version, version));
  }
  if (round_pushed_.count(update.worker_id)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("worker %d already pushed an update for the round on version %d",
                        update.worker_id, version));
  }
  // Validates the whole payload before adding: a bad update leaves the round sum untouched.
  if (absl::Status s =
          DecodeAccumulate(update.encoding, update.payload,
                           static_cast<double>(update.sample_count), absl::MakeSpan(round_sum_));
      !s.ok()) {
    return s;
  }
  round_samples_ += update.sample_count;
  round_pushed_.insert(update.worker_id);
  CloseRoundIfComplete();
  return SubmitResult{/*duplicate=*/false, store_->version()};
}

absl::StatusOr<SubmitResult> Aggregator::SubmitAsync(const Update& update, uint64_t version) {
  const double tau =
      static_cast<double>(version - update.base_version) / std::max(options_.num_workers, 1);
  if (tau > options_.max_staleness) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "stale update: built on version %d, but the current version is %d (staleness %.2f "
        "rounds > max_staleness %.2f); pull the current model and continue",
        update.base_version, version, tau, options_.max_staleness));
  }
  const double s = StalenessWeight(tau, options_.staleness_exponent);
  const double weight = update.kind == v1::UPDATE_KIND_GRADIENT
                            ? -options_.server_learning_rate * s
                            : s / std::max(options_.num_workers, 1);
  // Validate before Apply: a refused update must not cost a version.
  if (absl::Status s = ValidatePayload(update.encoding, update.payload, store_->size()); !s.ok()) {
    return s;
  }
  const uint64_t new_version = store_->Apply([&](absl::Span<float> model) {
    DecodeAccumulateValidated(update.encoding, update.payload, static_cast<float>(weight), model);
  });
  ++stats_.rounds_completed;
  return SubmitResult{/*duplicate=*/false, new_version};
}

void Aggregator::MaybeCloseRound() {
  absl::MutexLock lock(&mu_);
  CloseRoundIfComplete();
}

void Aggregator::CloseRoundIfComplete() {
  if (options_.mode != v1::AGGREGATION_MODE_SYNC || round_pushed_.empty()) return;
  if (!membership_->assembled()) return;  // wait until all K workers have joined once
  for (uint64_t id : membership_->LiveIds()) {
    if (!round_pushed_.count(id)) return;
  }
  const double inv_samples = 1.0 / static_cast<double>(round_samples_);
  const bool gradient = options_.update_kind == v1::UPDATE_KIND_GRADIENT;
  const float lr = options_.server_learning_rate;
  store_->Apply([&](absl::Span<float> model) {
    for (size_t i = 0; i < model.size(); ++i) {
      const float average = static_cast<float>(round_sum_[i] * inv_samples);
      model[i] += gradient ? -lr * average : average;
    }
  });
  std::fill(round_sum_.begin(), round_sum_.end(), 0.0);
  round_samples_ = 0;
  round_pushed_.clear();
  ++stats_.rounds_completed;
}

AggregatorStats Aggregator::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace ps
