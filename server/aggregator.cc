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
    : options_(options),
      store_(store),
      membership_(membership),
      outer_(options.outer, store->size()) {
  if (options_.mode == v1::AGGREGATION_MODE_SYNC) round_sum_.assign(store_->size(), 0.0);
  model_max_abs_ = MaxAbs(*store_->TrueModel());
}

absl::StatusOr<SubmitResult> Aggregator::Submit(const Update& update) {
  if (absl::Status s = membership_->Touch(update.worker_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::UnavailableError("the server is shutting down");
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
  // Before the duplicate check: a retry must be the same well-formed update, not any bytes.
  double update_max_abs = 0.0;
  if (absl::Status s =
          ValidatePayload(update.encoding, update.payload, store_->size(), &update_max_abs);
      !s.ok()) {
    return invalid(s);
  }
  if (absl::Status s = CheckUpdateRatio(update, update_max_abs); !s.ok()) return invalid(s);
  auto last = last_sequence_.find(update.worker_id);
  if (last != last_sequence_.end() && update.sequence <= last->second) {
    ++stats_.duplicate;
    return SubmitResult{/*duplicate=*/true, /*folded=*/false, version};
  }
  if (update.base_version > version || update.base_version == 0) {
    return invalid(absl::InvalidArgumentError(absl::StrFormat(
        "base version %d is not a version this server has published (current version %d)",
        update.base_version, version)));
  }
  absl::StatusOr<SubmitResult> result = options_.mode == v1::AGGREGATION_MODE_ASYNC
                                            ? SubmitAsync(update, version)
                                            : SubmitSync(update, version, update_max_abs);
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

double Aggregator::ServerStep() const {
  return options_.update_kind == v1::UPDATE_KIND_GRADIENT
             ? -options_.server_step.At(static_cast<double>(store_->version() - 1))
             : 1.0;
}

absl::Status Aggregator::CheckUpdateRatio(const Update& update, double update_max_abs) const {
  if (options_.max_update_ratio <= 0) return absl::OkStatus();
  const double change = std::abs(ServerStep()) * update_max_abs;
  const double allowed = options_.max_update_ratio * std::max(model_max_abs_, 1.0);
  if (change <= allowed) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "the update would change a coordinate by up to %g, over --max_update_ratio %g times the "
      "model's largest coordinate (%g, at least 1); nothing was applied",
      change, options_.max_update_ratio, model_max_abs_));
}

absl::Status Aggregator::CheckRoundStaysInRange(const Update& update, double update_max_abs) {
  // The round's average is a weighted mean of its updates (positive weights), so the model after
  // the round stays in range when x + step * u_k does for every update u_k. Normally the bound
  // proves it at once; only an update near float's range is checked coordinate by coordinate.
  const double step = ServerStep();
  if (model_max_abs_ + std::abs(step) * update_max_abs <= kMaxModelMagnitude) {
    return absl::OkStatus();
  }
  return CheckStaysInRange(update.encoding, update.payload, step, *store_->TrueModel());
}

absl::StatusOr<SubmitResult> Aggregator::SubmitSync(const Update& update, uint64_t version,
                                                    double update_max_abs) {
  if (update.base_version < version) {
    if (options_.late_policy == v1::LATE_POLICY_FOLD)
      return FoldLate(update, version, update_max_abs);
    ++stats_.late_dropped;
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
  if (absl::Status s = CheckRoundStaysInRange(update, update_max_abs); !s.ok()) return s;
  DecodeAccumulateValidated(update.encoding, update.payload,
                            static_cast<double>(update.sample_count), absl::MakeSpan(round_sum_));
  if (round_pushed_.empty()) round_first_update_ = options_.clock->Now();
  round_weight_ += static_cast<double>(update.sample_count);
  round_lr_sum_ += static_cast<double>(update.sample_count) * update.inner_learning_rate;
  round_pushed_.insert(update.worker_id);
  staleness_.Observe(0.0);
  CloseRoundIfComplete();
  return SubmitResult{/*duplicate=*/false, /*folded=*/false, store_->version()};
}

// A late sync update joins the open round with weight sample_count * s(tau), tau = rounds late.
// It does not count towards the round's quorum.
absl::StatusOr<SubmitResult> Aggregator::FoldLate(const Update& update, uint64_t version,
                                                  double update_max_abs) {
  const double tau = static_cast<double>(version - update.base_version);
  if (tau > options_.max_staleness) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "stale update: built on version %d, but the current version is %d (%.0f rounds late > "
        "max_staleness %.2f); pull the current model and continue",
        update.base_version, version, tau, options_.max_staleness));
  }
  if (absl::Status s = CheckRoundStaysInRange(update, update_max_abs); !s.ok()) return s;
  const double weight =
      static_cast<double>(update.sample_count) * StalenessWeight(tau, options_.staleness_exponent);
  DecodeAccumulateValidated(update.encoding, update.payload, weight, absl::MakeSpan(round_sum_));
  round_weight_ += weight;
  staleness_.Observe(tau);
  ++stats_.late_folded;
  return SubmitResult{/*duplicate=*/false, /*folded=*/true, version};
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
  const double k = std::max(options_.num_workers, 1);
  const double weight = update.kind == v1::UPDATE_KIND_GRADIENT
                            ? -options_.server_step.At(static_cast<double>(version - 1) / k) * s
                            : s / k;
  // Applied to the next version's copy, which is published only if every coordinate stayed in
  // range (checked in the same pass): a refused update costs no version and changes nothing.
  float new_max_abs = 0.0f;
  const bool delayed_nesterov = options_.outer.kind == OuterKind::kDelayedNesterov;
  // Delayed Nesterov changes its buffers as it applies; they are put back if the update is
  // refused, so that a refused update changes nothing (this costs a copy of them per update).
  std::vector<std::vector<float>> saved;
  if (delayed_nesterov) saved = outer_.buffers();
  absl::StatusOr<uint64_t> new_version =
      store_->TryApply([&](absl::Span<float> model) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        float max_abs = 0.0f;
        if (delayed_nesterov) {
          scratch_.assign(model.size(), 0.0f);
          DecodeAccumulateValidated(update.encoding, update.payload, 1.0f,
                                    absl::MakeSpan(scratch_));
          outer_.ApplyUpdate(model, scratch_, static_cast<float>(s));
          max_abs = MaxAbs(model);
        } else {
          max_abs = DecodeAccumulateValidated(update.encoding, update.payload,
                                              static_cast<float>(weight), model);
        }
        if (max_abs <= kMaxModelMagnitude) {
          new_max_abs = max_abs;
          return absl::OkStatus();
        }
        size_t i = 0;
        while (i + 1 < model.size() && std::abs(model[i]) <= kMaxModelMagnitude) ++i;
        return absl::InvalidArgumentError(
            absl::StrFormat("applying this update (weight %g) would take model coordinate %d to "
                            "%g, past the largest "
                            "magnitude a coordinate may have (%g); nothing was applied",
                            weight, i, model[i], kMaxModelMagnitude));
      });
  if (!new_version.ok()) {
    if (delayed_nesterov) (void)outer_.Restore(outer_.steps() - 1, std::move(saved));
    return new_version.status();
  }
  model_max_abs_ = new_max_abs;
  staleness_.Observe(tau);
  ++stats_.rounds_completed;
  return SubmitResult{/*duplicate=*/false, /*folded=*/false, *new_version};
}

void Aggregator::MaybeCloseRound() {
  absl::MutexLock lock(&mu_);
  CloseRoundIfComplete();
}

void Aggregator::CloseRoundIfComplete() {
  if (options_.mode != v1::AGGREGATION_MODE_SYNC || round_pushed_.empty() || stopped_) return;
  const size_t arrived = round_pushed_.size();
  // Past the deadline, the minimum quorum is enough, even before all workers have joined.
  if (options_.clock->Now() - round_first_update_ >= options_.round_deadline &&
      arrived >= static_cast<size_t>(std::max(options_.min_quorum, 1))) {
    ++stats_.rounds_closed_by_deadline;
    return CloseRound();
  }
  // Until all K workers have joined once, wait for them, but not longer than a lease after the
  // round's first update: one that never comes (it died while the server was down, say) must not
  // hold the run up.
  if (!membership_->assembled() &&
      options_.clock->Now() - round_first_update_ < membership_->lease()) {
    return;
  }
  // Expected: live members that joined before the round opened, and anyone who pushed to it.
  size_t expected = 0;
  bool all_in = true;
  for (const Member& m : membership_->Members()) {
    const bool pushed = round_pushed_.count(m.id) > 0;
    if (m.join_serial > round_join_serial_ && !pushed) continue;
    ++expected;
    all_in = all_in && pushed;
  }
  if (all_in) {
    ++stats_.rounds_closed_complete;
    return CloseRound();
  }
  // Backup workers (Chen et al. 2016): the first N = K - b updates close the round.
  const int quorum = options_.num_workers - options_.backup_workers;
  if (options_.backup_workers > 0 && arrived >= static_cast<size_t>(std::max(quorum, 1)) &&
      arrived < expected) {
    ++stats_.rounds_closed_by_quorum;
    return CloseRound();
  }
}

void Aggregator::CloseRound() {
  const double inv_weight = 1.0 / round_weight_;
  const bool gradient = options_.update_kind == v1::UPDATE_KIND_GRADIENT;
  const float lr =
      gradient ? options_.server_step.At(static_cast<double>(store_->version() - 1)) : 0.0f;
  const double* sum = round_sum_.data();  // read under mu_, which the lambda runs under
  float max_abs = 0.0f;                   // of the new model, for the next round's range checks
  const double inner_lr = round_lr_sum_ * inv_weight;
  store_->Apply([&](absl::Span<float> model) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (!gradient) {
      max_abs = outer_.ApplyRound(model, round_sum_, inv_weight, inner_lr);
      return;
    }
    for (size_t i = 0; i < model.size(); ++i) {
      model[i] += -lr * static_cast<float>(sum[i] * inv_weight);
      max_abs = std::max(max_abs, std::abs(model[i]));
    }
  });
  model_max_abs_ = max_abs;
  stats_.last_round_wait = options_.clock->Now() - round_first_update_;
  stats_.max_round_wait = std::max(stats_.max_round_wait, stats_.last_round_wait);
  round_wait_.Observe(absl::ToDoubleSeconds(stats_.last_round_wait));
  std::fill(round_sum_.begin(), round_sum_.end(), 0.0);
  round_weight_ = 0.0;
  round_lr_sum_ = 0.0;
  round_pushed_.clear();
  round_join_serial_ = membership_->last_join_serial();
  ++stats_.rounds_completed;
}

RoundEnd Aggregator::FinishOpenRound() {
  absl::MutexLock lock(&mu_);
  if (stopped_) return RoundEnd::kNoneOpen;
  RoundEnd end = RoundEnd::kNoneOpen;
  if (options_.mode == v1::AGGREGATION_MODE_SYNC && !round_pushed_.empty()) {
    if (round_pushed_.size() >= static_cast<size_t>(std::max(options_.min_quorum, 1))) {
      CloseRound();
      end = RoundEnd::kClosed;
    } else {
      std::fill(round_sum_.begin(), round_sum_.end(), 0.0);
      round_weight_ = 0.0;
      round_lr_sum_ = 0.0;
      round_pushed_.clear();
      ++stats_.rounds_abandoned;
      end = RoundEnd::kAbandoned;
    }
  }
  stopped_ = true;
  return end;
}

void Aggregator::Forget(uint64_t worker_id) {
  absl::MutexLock lock(&mu_);
  last_sequence_.erase(worker_id);
}

Aggregator::Snapshot Aggregator::SnapshotForCheckpoint() const {
  absl::MutexLock lock(&mu_);
  return Snapshot{store_->State(), outer_.steps(), outer_.buffers()};
}

absl::Status Aggregator::RestoreOuter(uint64_t steps, std::vector<std::vector<float>> buffers) {
  absl::MutexLock lock(&mu_);
  return outer_.Restore(steps, std::move(buffers));
}

void Aggregator::RestoreCounters(uint64_t rounds_completed, uint64_t applied) {
  absl::MutexLock lock(&mu_);
  stats_.rounds_completed = rounds_completed;
  stats_.applied = applied;
}

size_t Aggregator::tracked_workers() const {
  absl::MutexLock lock(&mu_);
  return last_sequence_.size();
}

AggregatorStats Aggregator::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace ps
