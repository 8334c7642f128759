#include "server/aggregator.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_format.h"
#include "common/codec.h"
#include "common/status_macros.h"

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
  model_max_abs_ = MaxAbs(*store_->TrueModel());
  if (options_.apply_threads > 0)
    apply_pool_ = std::make_unique<ThreadPool>(options_.apply_threads);
}

absl::Status Aggregator::ValidateAlone(const Update& update, double* update_max_abs) const {
  if (update.kind != options_.update_kind) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "update kind %s does not match the server's %s", v1::UpdateKind_Name(update.kind),
        v1::UpdateKind_Name(options_.update_kind)));
  }
  if (update.sample_count == 0) return absl::InvalidArgumentError("sample_count must be > 0");
  return ValidatePayload(update.encoding, update.payload, store_->size(), update_max_abs);
}

absl::StatusOr<SubmitResult> Aggregator::Submit(const Update& update) {
  if (absl::Status s = membership_->Touch(update.worker_id); !s.ok()) return s;
  // Before any lock (the payload check is a pass over the whole update), and before the
  // duplicate check: a retry must be the same well-formed update, not any bytes.
  double update_max_abs = 0.0;
  const absl::Status valid = ValidateAlone(update, &update_max_abs);
  uint64_t publish = 0;
  absl::StatusOr<SubmitResult> result;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return absl::UnavailableError("the server is shutting down");
    if (!valid.ok()) {
      ++stats_.refused_invalid;
      return valid;
    }
    if (options_.mode == v1::AGGREGATION_MODE_ASYNC) {
      result = SubmitAsync(update, update_max_abs, &publish);
    } else {
      const uint64_t version = store_->version();
      absl::StatusOr<std::optional<SubmitResult>> checked =
          CheckAgainstState(update, update_max_abs, version);
      result = !checked.ok()          ? absl::StatusOr<SubmitResult>(checked.status())
               : checked->has_value() ? **checked
                                      : SubmitSync(update, version, update_max_abs);
      Account(update, result);
    }
  }
  // Waiting pulls are woken with no lock of ours held: their first writes do not hold up the
  // next batch.
  if (publish > 0) store_->Notify(publish);
  return result;
}

absl::StatusOr<std::optional<SubmitResult>> Aggregator::CheckAgainstState(const Update& update,
                                                                          double update_max_abs,
                                                                          uint64_t version) {
  PS_RETURN_IF_ERROR(CheckUpdateRatio(update, update_max_abs));
  auto last = last_sequence_.find(update.worker_id);
  if (last != last_sequence_.end() && update.sequence <= last->second) {
    return SubmitResult{/*duplicate=*/true, /*folded=*/false, version};
  }
  if (update.base_version > version || update.base_version == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "base version %d is not a version this server has published (current version %d)",
        update.base_version, version));
  }
  return std::nullopt;
}

void Aggregator::Account(const Update& update, const absl::StatusOr<SubmitResult>& result) {
  if (result.ok() && result->duplicate) {
    ++stats_.duplicate;
  } else if (result.ok()) {
    // A worker that left while its update was applied keeps no entry (Forget ran already).
    if (membership_->IsMember(update.worker_id)) {
      last_sequence_[update.worker_id] = update.sequence;
    }
    membership_->CountAcceptedUpdate(update.worker_id);
    ++stats_.applied;
    stats_.last_train_loss = update.train_loss;
  } else if (result.status().code() == absl::StatusCode::kInvalidArgument) {
    ++stats_.refused_invalid;
  } else if (result.status().code() == absl::StatusCode::kFailedPrecondition) {
    ++stats_.refused_stale;
  }
}

void Aggregator::ForRanges(uint64_t n, uint64_t alignment,
                           absl::FunctionRef<void(uint64_t, uint64_t)> fn) {
  // Ranges of 32 Ki floats: the copy and every update of a batch stay in the core's cache.
  constexpr uint64_t kGrain = uint64_t{1} << 15;
  const uint64_t grain = (kGrain + alignment - 1) / alignment * alignment;
  if (apply_pool_ == nullptr || n <= grain) return fn(0, n);
  apply_pool_->ParallelFor(n, grain, fn);
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
  if (round_pushed_.empty()) round_first_update_ = options_.clock->Now();
  AddToRoundMean(update, static_cast<double>(update.sample_count));
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
  AddToRoundMean(update, weight);
  staleness_.Observe(tau);
  ++stats_.late_folded;
  return SubmitResult{/*duplicate=*/false, /*folded=*/true, version};
}

absl::StatusOr<SubmitResult> Aggregator::SubmitAsync(const Update& update, double update_max_abs,
                                                     uint64_t* publish) {
  Writer w;
  w.update = &update;
  w.update_max_abs = update_max_abs;
  writers_.push_back(&w);
  auto my_turn = [this, &w]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return w.done || writers_.front() == &w;
  };
  mu_.Await(absl::Condition(&my_turn));
  if (!w.done) *publish = LeadBatch();  // w leads the batch at the queue's front
  return w.result;
}

void Aggregator::AssignAsyncWeight(Writer* w, uint64_t version) const {
  const Update& u = *w->update;
  const double k = std::max(options_.num_workers, 1);
  w->tau = static_cast<double>(version - u.base_version) / k;
  const double s = StalenessWeight(w->tau, options_.staleness_exponent);
  w->weight = u.kind == v1::UPDATE_KIND_GRADIENT
                  ? -options_.server_step.At(static_cast<double>(version - 1) / k) * s
                  : s / k;
}

void Aggregator::AdmitAsync(Writer* w, uint64_t current_version, uint64_t version) {
  const Update& u = *w->update;
  if (stopped_) {
    w->result = absl::UnavailableError("the server is shutting down");
    return;
  }
  absl::StatusOr<std::optional<SubmitResult>> checked =
      CheckAgainstState(u, w->update_max_abs, current_version);
  if (!checked.ok() || checked->has_value()) {
    w->result = !checked.ok() ? absl::StatusOr<SubmitResult>(checked.status()) : **checked;
    return;
  }
  AssignAsyncWeight(w, version);
  if (w->tau > options_.max_staleness) {
    w->result = absl::FailedPreconditionError(absl::StrFormat(
        "stale update: built on version %d, but the current version is %d (staleness %.2f "
        "rounds > max_staleness %.2f); pull the current model and continue",
        u.base_version, version, w->tau, options_.max_staleness));
    return;
  }
  // Taken now, so that a second copy of it in the same batch is a duplicate; put back if the
  // apply refuses it.
  auto last = last_sequence_.find(u.worker_id);
  w->had_sequence = last != last_sequence_.end();
  if (w->had_sequence) w->previous_sequence = last->second;
  last_sequence_[u.worker_id] = u.sequence;
  w->result = SubmitResult{};
}

// Group commit (as leveldb's writer queue): the leader takes what queued up, admits each update
// at the version it would have had one at a time (so its staleness weight is what it would have
// been), then applies them all with the lock released. The queue holds later writers until it
// is done.
uint64_t Aggregator::LeadBatch() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const bool one_at_a_time = options_.outer.kind == OuterKind::kDelayedNesterov;
  const size_t cap = one_at_a_time ? 1 : static_cast<size_t>(std::max(options_.max_batch, 1));
  const std::vector<Writer*> batch(writers_.begin(),
                                   writers_.begin() + std::min(cap, writers_.size()));
  const uint64_t version = store_->version();
  std::vector<Writer*> admitted;
  for (Writer* w : batch) {
    AdmitAsync(w, version, version + admitted.size());
    if (w->result.ok() && !w->result->duplicate) admitted.push_back(w);
  }
  float max_abs = 0.0f;
  mu_.Unlock();  // the batch's work runs without mu_: Status, metrics and housekeeping go on
  if (options_.on_batch_for_test) options_.on_batch_for_test(admitted.size());
  const uint64_t published = ApplyBatch(admitted, &max_abs);
  mu_.Lock();
  for (Writer* w : admitted) {
    if (!w->result.ok() && last_sequence_.count(w->update->worker_id)) {
      if (w->had_sequence) {
        last_sequence_[w->update->worker_id] = w->previous_sequence;
      } else {
        last_sequence_.erase(w->update->worker_id);
      }
    }
  }
  for (Writer* w : batch) {
    Account(*w->update, w->result);
    if (w->result.ok() && !w->result->duplicate) {
      staleness_.Observe(w->tau);
      ++stats_.rounds_completed;
    }
    w->done = true;
  }
  writers_.erase(writers_.begin(), writers_.begin() + batch.size());
  if (published > 0) {
    model_max_abs_ = max_abs;
    ++stats_.batches;
    stats_.largest_batch = std::max<uint64_t>(stats_.largest_batch, admitted.size());
  }
  return published;
}

uint64_t Aggregator::ApplyBatch(const std::vector<Writer*>& batch, float* model_max_abs) {
  if (batch.empty()) return 0;
  absl::MutexLock lock(&apply_mu_);
  if (options_.outer.kind == OuterKind::kDelayedNesterov) {  // batches of one
    absl::StatusOr<uint64_t> v = ApplyDelayedNesterov(batch[0], model_max_abs);
    if (!v.ok()) batch[0]->result = v.status();
    return v.ok() ? *v : 0;
  }
  auto apply = [&](const std::vector<Writer*>& writers) {
    return store_->TryPublish(
        writers.size(),
        [&](absl::Span<const float> current, absl::Span<float> next) {
          return ApplyTiles(writers, current, next, model_max_abs);
        },
        /*notify=*/false);
  };
  absl::StatusOr<uint64_t> v = apply(batch);
  if (v.ok() || batch.size() == 1) {
    for (Writer* w : batch) {
      if (v.ok()) {
        w->result->version = *v;
      } else {
        w->result = v.status();
      }
    }
    return v.ok() ? *v : 0;
  }
  // Some update would take a coordinate out of range: one at a time, so that only it is refused.
  uint64_t published = 0;
  float last_max_abs = 0.0f;
  for (Writer* w : batch) {
    AssignAsyncWeight(w, store_->version());
    absl::StatusOr<uint64_t> one = apply({w});
    if (one.ok()) {
      w->result->version = published = *one;
      last_max_abs = *model_max_abs;
    } else {
      w->result = one.status();
    }
  }
  *model_max_abs = last_max_abs;
  return published;
}

absl::Status Aggregator::ApplyTiles(const std::vector<Writer*>& batch,
                                    absl::Span<const float> current, absl::Span<float> next,
                                    float* max_abs) {
  const uint64_t n = current.size();
  uint64_t alignment = 1;
  for (const Writer* w : batch) {
    alignment = std::lcm(alignment, RangeAlignment(w->update->encoding));
    if (alignment > n) alignment = std::max<uint64_t>(n, 1);  // one range: no alignment needed
  }
  std::vector<float> range_max;
  absl::Mutex range_max_mu;
  ForRanges(n, alignment, [&](uint64_t begin, uint64_t end) {
    const absl::Span<float> out = next.subspan(begin, end - begin);
    std::copy(current.begin() + begin, current.begin() + end, out.begin());
    float m = 0.0f;  // the last decode's maximum is over the range's final values
    for (const Writer* w : batch) {
      m = DecodeAccumulateRange(w->update->encoding, w->update->payload,
                                static_cast<float>(w->weight), n, begin, out);
    }
    absl::MutexLock lock(&range_max_mu);
    range_max.push_back(m);
  });
  float m = 0.0f;
  for (float r : range_max) m = std::isnan(r) || std::isnan(m) ? NAN : std::max(m, r);
  if (m <= kMaxModelMagnitude) {
    *max_abs = m;
    return absl::OkStatus();
  }
  size_t i = 0;
  while (i + 1 < n && std::abs(next[i]) <= kMaxModelMagnitude) ++i;
  return absl::InvalidArgumentError(absl::StrFormat(
      "applying this update (weight %g) would take model coordinate %d to %g, past the largest "
      "magnitude a coordinate may have (%g); nothing was applied",
      batch.back()->weight, i, next[i], kMaxModelMagnitude));
}

absl::StatusOr<uint64_t> Aggregator::ApplyDelayedNesterov(Writer* w, float* max_abs) {
  const Update& update = *w->update;
  // Delayed Nesterov changes its buffers as it applies; they are put back if the update is
  // refused, so that a refused update changes nothing (this costs a copy of them per update).
  std::vector<std::vector<float>> saved = outer_.buffers();
  absl::StatusOr<uint64_t> v = store_->TryPublish(
      1,
      [&](absl::Span<const float> current, absl::Span<float> model) ABSL_NO_THREAD_SAFETY_ANALYSIS {
        std::copy(current.begin(), current.end(), model.begin());
        scratch_.assign(model.size(), 0.0f);
        DecodeAccumulateValidated(update.encoding, update.payload, 1.0f, absl::MakeSpan(scratch_));
        outer_.ApplyUpdate(
            model, scratch_,
            static_cast<float>(StalenessWeight(w->tau, options_.staleness_exponent)));
        *max_abs = MaxAbs(model);
        if (*max_abs <= kMaxModelMagnitude) return absl::OkStatus();
        return absl::InvalidArgumentError(absl::StrFormat(
            "applying this update would take a model coordinate past the largest magnitude "
            "a coordinate may have (%g); nothing was applied",
            kMaxModelMagnitude));
      },
      /*notify=*/false);
  if (!v.ok()) (void)outer_.Restore(outer_.steps() - 1, std::move(saved));
  return v;
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

// The running weighted mean: mean += (w / W) (u - mean), as (1 - c) mean + c u over ranges in
// parallel. It is a convex combination, so it never leaves the updates' range, and float (not a
// double sum, twice the model's bytes) is enough: one update is reproduced bit for bit (c = 1),
// and each later one adds a rounding of a float's relative precision.
void Aggregator::AddToRoundMean(const Update& update, double weight) {
  const bool first = round_weight_ == 0.0;  // what the mean holds is from an earlier round
  round_weight_ += weight;
  const float c = first ? 1.0f : static_cast<float>(weight / round_weight_);
  // Taken at the first update, not at start: an initial upload's buffers are gone by then.
  if (round_mean_ == nullptr) round_mean_ = store_->TakeStorage();
  const absl::Span<float> mean = absl::MakeSpan(*round_mean_);
  ForRanges(mean.size(), RangeAlignment(update.encoding), [&](uint64_t begin, uint64_t end) {
    const absl::Span<float> part = mean.subspan(begin, end - begin);
    if (first) {
      std::fill(part.begin(), part.end(), 0.0f);
    } else {
      for (float& x : part) x *= 1.0f - c;
    }
    DecodeAccumulateRange(update.encoding, update.payload, c, mean.size(), begin, part);
  });
}

void Aggregator::CloseRound() {
  absl::MutexLock applying(&apply_mu_);  // the outer optimizer's state
  const bool gradient = options_.update_kind == v1::UPDATE_KIND_GRADIENT;
  const float lr =
      gradient ? options_.server_step.At(static_cast<double>(store_->version() - 1)) : 0.0f;
  float max_abs = 0.0f;  // of the new model, for the next round's range checks
  const double inner_lr = round_lr_sum_ / round_weight_;
  // The mean's storage becomes the new version (no copy of the model), and the retired version
  // the next round's mean.
  store_->PublishFrom(std::move(round_mean_),
                      [&](absl::Span<const float> model, absl::Span<float> mean_then_next)
                          ABSL_NO_THREAD_SAFETY_ANALYSIS {
                            if (!gradient) {
                              max_abs = outer_.ApplyRound(model, mean_then_next, inner_lr);
                              return;
                            }
                            for (size_t i = 0; i < model.size(); ++i) {
                              mean_then_next[i] = model[i] - lr * mean_then_next[i];
                              max_abs = std::max(max_abs, std::abs(mean_then_next[i]));
                            }
                          });
  round_mean_ = store_->TakeStorage();
  model_max_abs_ = max_abs;
  stats_.last_round_wait = options_.clock->Now() - round_first_update_;
  stats_.max_round_wait = std::max(stats_.max_round_wait, stats_.last_round_wait);
  round_wait_.Observe(absl::ToDoubleSeconds(stats_.last_round_wait));
  round_weight_ = 0.0;  // the next update overwrites the mean
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
  absl::MutexLock applying(&apply_mu_);  // not while a batch is half published
  return Snapshot{store_->State(), outer_.steps(), outer_.buffers()};
}

absl::Status Aggregator::RestoreOuter(uint64_t steps, std::vector<std::vector<float>> buffers) {
  absl::MutexLock lock(&mu_);
  absl::MutexLock applying(&apply_mu_);
  return outer_.Restore(steps, std::move(buffers));
}

void Aggregator::RestoreCounters(uint64_t rounds_completed, uint64_t applied) {
  absl::MutexLock lock(&mu_);
  stats_.rounds_completed = rounds_completed;
  stats_.applied = applied;
}

size_t Aggregator::queued_updates() const {
  absl::MutexLock lock(&mu_);
  return writers_.size();
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
