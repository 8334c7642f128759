#include "client/grpc_session.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace ps {

GrpcSession::GrpcSession(const SessionOptions& options, std::unique_ptr<ShardedClient> client)
    : options_(options), client_(std::move(client)) {}

GrpcSession::~GrpcSession() {
  // A session dropped without Leave still stops its heartbeats (the client's destructor does)
  // and lets the lease run out: leaving here could block a destructor on the network.
}

absl::StatusOr<v1::StatusResponse> GrpcSession::ServerStatus() { return client_->Status(); }

uint64_t GrpcSession::version() const {
  return versions_.empty() ? 0 : *std::min_element(versions_.begin(), versions_.end());
}

absl::StatusOr<JoinedRun> GrpcSession::Join(const ModelValues& initial) {
  if (joined_) return absl::FailedPreconditionError("Join: this session has joined already");
  if (!initial.values.empty() && initial.values.size() != initial.layout.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Join: %d initial values for a layout of %d coordinates",
                        initial.values.size(), initial.layout.size()));
  }
  PS_ASSIGN_OR_RETURN(v1::JoinResponse joined, client_->Join(std::nullopt, &initial));
  config_ = joined.config();
  if (absl::Status s = ApplyOverrides(options_.compression, &config_); !s.ok()) {
    (void)client_->Leave();
    return s;
  }
  layout_ = initial.layout;
  rank_ = joined.rank();
  prefix_ = absl::StrFormat("[worker %d] ", rank_);
  const size_t num_shards = client_->num_shards();
  const std::vector<KeyRange>& ranges = client_->ranges();
  compressors_.clear();
  for (size_t i = 0; i < num_shards; ++i) {
    compressors_.emplace_back(config_, ranges[i].size(),
                              CompressorSeed(config_.data_seed(), rank_, i));
  }
  encodings_.assign(num_shards, {});
  payloads_.assign(num_shards, {});
  global_.assign(joined.model_size(), 0.0f);
  versions_.assign(num_shards, 0);
  joined_ = true;
  client_->StartHeartbeats();
  RoundResult first;
  PS_RETURN_IF_ERROR(PullAll(versions_, &first));

  JoinedRun run;
  run.worker_id = joined.worker_id();
  run.rank = rank_;
  run.config = config_;
  run.layout = layout_;
  run.version = version();
  return run;
}

absl::Status GrpcSession::Rejoin(size_t i) {
  LogWarning(absl::StrCat(prefix_, "server shard ", i,
                          " does not know this worker (restarted, or the lease ran out): "
                          "joining again as rank ",
                          rank_));
  // A shard that came back without any model takes ours: the newest there is.
  const ModelValues current{layout_, global_};
  PS_RETURN_IF_ERROR(client_->Rejoin(i, static_cast<int>(rank_), &current, versions_[i]));
  ++rejoins_;
  compressors_[i].ResetResidual();
  versions_[i] = 0;
  return absl::OkStatus();
}

// A shard that stays behind longer than the pull wait is taken as it is, with a warning, rather
// than hang. Shards pulled in full (have 0: just joined or re-joined) have no round to match.
absl::Status GrpcSession::PullAll(std::vector<uint64_t> have, RoundResult* round) {
  const size_t num_shards = versions_.size();
  const absl::Time since = absl::Now();
  while (true) {
    std::vector<bool> which(num_shards);
    bool behind = false;
    for (size_t i = 0; i < num_shards; ++i) behind |= which[i] = versions_[i] <= have[i];
    if (!behind) {
      if (!sync() || num_shards == 1) return absl::OkStatus();
      uint64_t most = 0;
      for (size_t i = 0; i < num_shards; ++i) {
        if (have[i] > 0) most = std::max(most, versions_[i] - have[i]);
      }
      for (size_t i = 0; i < num_shards; ++i) {
        behind |= which[i] = have[i] > 0 && versions_[i] - have[i] < most;
      }
      if (!behind) return absl::OkStatus();
      if (absl::Now() - since > options_.pull_wait) {
        LogWarning(absl::StrCat(prefix_, "server shards are at different rounds; going on"));
        return absl::OkStatus();
      }
    }
    std::vector<absl::StatusOr<PullResult>> pulled =
        client_->Pull(versions_, which, options_.pull_wait, absl::MakeSpan(global_));
    bool changed = false;
    for (size_t i = 0; i < num_shards; ++i) {
      if (!which[i]) continue;
      if (absl::IsNotFound(pulled[i].status())) {
        PS_RETURN_IF_ERROR(Rejoin(i));
        round->rejoined = true;
        have[i] = 0;
      } else if (!pulled[i].ok()) {
        return pulled[i].status();
      } else if (pulled[i]->changed) {
        versions_[i] = pulled[i]->version;
        changed = true;
      }
    }
    if (!changed) {
      LogInfo(absl::StrFormat("%swaiting for the round on version %d to close (%.0fs so far)",
                              prefix_, have[0], absl::ToDoubleSeconds(absl::Now() - since)));
    }
  }
}

// Sharded sync rounds can fall out of phase: after a partition, some workers hold shard 0's
// model one round behind and others shard 1's. Each group's push is then refused by one shard,
// whose round waits for the deadline, and at the deadline both groups are out of phase again: a
// livelock of refused updates, one round per deadline. A push refused as exactly one round late
// by shard i while another shard took this round's update is therefore pushed again, on shard
// i's current version, so that every shard's open round gets this worker's update and closes
// without waiting for the deadline; from then on the worker holds one round on every shard.
// (An update more than one round late, or refused by every shard, is dropped as before.)
absl::Status GrpcSession::RepushOneRoundLate(v1::UpdateKind kind, const UpdateInfo& info,
                                             std::vector<uint64_t>* have,
                                             std::vector<absl::StatusOr<v1::PushAck>>* acks,
                                             RoundResult* round) {
  const size_t n = acks->size();
  if (std::none_of(acks->begin(), acks->end(), [](const auto& a) { return a.ok(); })) {
    return absl::OkStatus();
  }
  for (size_t i = 0; i < n; ++i) {
    if (!absl::IsFailedPrecondition((*acks)[i].status())) continue;
    // The update is already encoded, so the shard's part of global_ may take its current model.
    std::vector<bool> which(n, false);
    which[i] = true;
    std::vector<absl::StatusOr<PullResult>> pulled =
        client_->Pull(versions_, which, absl::ZeroDuration(), absl::MakeSpan(global_));
    if (absl::IsNotFound(pulled[i].status())) continue;  // re-joined below, as for the push
    if (!pulled[i].ok()) return pulled[i].status();
    if (!pulled[i]->changed) continue;
    const uint64_t late_by = pulled[i]->version - versions_[i];
    versions_[i] = pulled[i]->version;
    if (late_by != 1) continue;
    absl::StatusOr<v1::PushAck> again =
        client_->PushShard(i, kind, versions_[i], info.sample_count, encodings_[i], payloads_[i],
                           info.train_loss, info.learning_rate);
    if (!again.ok()) continue;  // handled as the first refusal would have been
    (*acks)[i] = std::move(again);
    (*have)[i] = versions_[i];  // now wait for the round it was pushed to
    ++round->repushes;
    ++stale_repushes_;
    LogWarning(absl::StrCat(prefix_, "update refused as one round late by shard ", i,
                            "; pushed again on its version ", versions_[i],
                            " to bring the shards back into phase"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RoundResult> GrpcSession::Push(absl::Span<const float> update,
                                              const UpdateInfo& info) {
  if (!joined_ || left_) return absl::FailedPreconditionError("Push: the session is not joined");
  if (update.size() != global_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Push: an update of %d values for a model of %d", update.size(), global_.size()));
  }
  const size_t num_shards = versions_.size();
  const std::vector<KeyRange>& ranges = client_->ranges();
  const uint64_t n = info.total_rounds > 0 ? info.round : messages_;
  ++messages_;
  RoundResult round;
  round.bits = 0.0;
  for (size_t i = 0; i < num_shards; ++i) {
    PS_RETURN_IF_ERROR(compressors_[i].Compress(update.subspan(ranges[i].begin, ranges[i].size()),
                                                n, info.total_rounds, &encodings_[i],
                                                &payloads_[i]));
    round.bits += static_cast<double>(compressors_[i].last_bits()) / num_shards;
  }
  const v1::UpdateKind kind = config_.update_kind();
  std::vector<absl::StatusOr<v1::PushAck>> acks =
      client_->Push(kind, versions_, info.sample_count, encodings_, payloads_, info.train_loss,
                    info.learning_rate);
  ++updates_;
  bits_sum_.store(bits_sum_.load() + round.bits);
  std::vector<uint64_t> have = versions_;
  if (sync() && num_shards > 1) {
    PS_RETURN_IF_ERROR(RepushOneRoundLate(kind, info, &have, &acks, &round));
  }
  for (size_t i = 0; i < num_shards; ++i) {
    if (acks[i].ok()) continue;
    if (absl::IsNotFound(acks[i].status())) {
      PS_RETURN_IF_ERROR(Rejoin(i));
      round.rejoined = true;
      have[i] = 0;
    } else if (absl::IsFailedPrecondition(acks[i].status())) {
      // Too stale: the update is dropped; go on from the current model, and forget the residual,
      // which belonged to updates of an older model.
      ++round.stale_refusals;
      ++stale_refusals_;
      compressors_[i].ResetResidual();
      LogWarning(absl::StrCat(prefix_, "update refused: ", acks[i].status().message()));
    } else {
      return acks[i].status();
    }
  }
  PS_RETURN_IF_ERROR(PullAll(have, &round));
  round.version = version();
  return round;
}

// A shard that forgot this process keeps the part already held.
absl::StatusOr<uint64_t> GrpcSession::Refresh(absl::Duration wait) {
  if (!joined_) return absl::FailedPreconditionError("Refresh: the session is not joined");
  const size_t num_shards = versions_.size();
  std::vector<absl::StatusOr<PullResult>> last =
      client_->Pull(versions_, std::vector<bool>(num_shards, true), wait, absl::MakeSpan(global_));
  for (size_t i = 0; i < num_shards; ++i) {
    if (last[i].ok() && last[i]->changed) versions_[i] = last[i]->version;
    if (!last[i].ok() && !absl::IsNotFound(last[i].status())) return last[i].status();
  }
  return version();
}

// The report is only for the servers' summaries; a shard that forgot us is noticed at the push.
absl::Status GrpcSession::Report(const v1::EvalReport& eval) {
  absl::Status s = client_->Heartbeat(&eval);
  return absl::IsNotFound(s) ? absl::OkStatus() : s;
}

// NOT_FOUND here means the server already forgot us: nothing left to leave.
absl::Status GrpcSession::Leave() {
  if (!joined_ || left_) return absl::OkStatus();
  left_ = true;
  absl::Status s = client_->Leave();
  return absl::IsNotFound(s) ? absl::OkStatus() : s;
}

SessionCounters GrpcSession::counters() const {
  SessionCounters c;
  c.wire = client_->wire();
  c.updates = updates_.load();
  c.stale_refusals = stale_refusals_.load();
  c.stale_repushes = stale_repushes_.load();
  c.rejoins = rejoins_.load();
  if (c.updates > 0) c.mean_update_bits = bits_sum_.load() / c.updates;
  return c;
}

}  // namespace ps
