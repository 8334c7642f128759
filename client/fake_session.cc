#include "client/fake_session.h"

#include "absl/strings/str_format.h"

namespace ps {

FakeSession::FakeSession(const v1::TrainingConfig& config) : config_(config) {}

void FakeSession::RefuseNextPush() { refuse_next_ = true; }

void FakeSession::RestartServerAt(uint64_t version, std::vector<float> model) {
  restart_next_ = true;
  restart_version_ = version;
  restart_model_ = std::move(model);
}

absl::StatusOr<v1::StatusResponse> FakeSession::ServerStatus() {
  v1::StatusResponse status;
  *status.mutable_config() = config_;
  status.set_version(version());
  status.set_model_size(model_.size());
  status.set_has_model(joined_);
  status.set_shard_count(1);
  return status;
}

absl::StatusOr<JoinedRun> FakeSession::Join(const ModelValues& initial) {
  if (joined_) return absl::FailedPreconditionError("Join: this session has joined already");
  if (initial.values.size() != initial.layout.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Join: %d initial values for a layout of %d coordinates",
                        initial.values.size(), initial.layout.size()));
  }
  layout_ = initial.layout;
  model_ = initial.values;
  joined_ = true;
  {
    absl::MutexLock lock(&mu_);
    version_ = 1;
  }
  JoinedRun run;
  run.worker_id = 1;
  run.config = config_;
  run.layout = layout_;
  run.version = 1;
  return run;
}

uint64_t FakeSession::version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

absl::StatusOr<RoundResult> FakeSession::Push(absl::Span<const float> update,
                                              const UpdateInfo& info) {
  if (!joined_) return absl::FailedPreconditionError("Push: the session is not joined");
  if (update.size() != model_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Push: an update of %d values for a model of %d", update.size(), model_.size()));
  }
  absl::MutexLock lock(&mu_);
  pushes_.push_back(info);
  ++counters_.updates;
  RoundResult round;
  const uint64_t fp32_bytes = update.size() * sizeof(float);
  counters_.wire.bytes_sent += fp32_bytes;
  counters_.wire.raw_bytes_sent += fp32_bytes;
  if (restart_next_) {
    restart_next_ = false;
    if (!restart_model_.empty()) model_ = std::move(restart_model_);
    version_ = restart_version_;
    round.rejoined = true;
    ++counters_.rejoins;
  } else if (refuse_next_) {
    refuse_next_ = false;
    ++round.stale_refusals;
    ++counters_.stale_refusals;
  } else {
    const bool gradient = config_.update_kind() == v1::UPDATE_KIND_GRADIENT;
    const float scale = gradient ? -config_.learning_rate() : 1.0f;
    for (size_t i = 0; i < model_.size(); ++i) model_[i] += scale * update[i];
    ++version_;
  }
  counters_.wire.bytes_received += fp32_bytes;
  counters_.wire.raw_bytes_received += fp32_bytes;
  round.version = version_;
  return round;
}

absl::StatusOr<uint64_t> FakeSession::Refresh(absl::Duration) {
  if (!joined_) return absl::FailedPreconditionError("Refresh: the session is not joined");
  return version();
}

absl::Status FakeSession::Report(const v1::EvalReport& eval) {
  absl::MutexLock lock(&mu_);
  reports_.push_back(eval);
  return absl::OkStatus();
}

absl::Status FakeSession::Leave() {
  absl::MutexLock lock(&mu_);
  left_ = true;
  return absl::OkStatus();
}

SessionCounters FakeSession::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

std::vector<UpdateInfo> FakeSession::pushes() const {
  absl::MutexLock lock(&mu_);
  return pushes_;
}

std::vector<v1::EvalReport> FakeSession::reports() const {
  absl::MutexLock lock(&mu_);
  return reports_;
}

bool FakeSession::left() const {
  absl::MutexLock lock(&mu_);
  return left_;
}

}  // namespace ps
