#include "server/service_handler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/codec.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace ps {

void WireCounters::ToProto(v1::WireCounters* out) const {
  out->set_bytes_received(bytes_received);
  out->set_bytes_sent(bytes_sent);
  out->set_payload_bytes_received(payload_bytes_received);
  out->set_payload_bytes_sent(payload_bytes_sent);
  out->set_raw_bytes_received(raw_bytes_received);
  out->set_raw_bytes_sent(raw_bytes_sent);
}

ServiceHandler::ServiceHandler(const ServiceOptions& options)
    : options_(options), push_buffers_(options.push_buffer_bytes) {}

PushRules ServiceHandler::RulesFor(const Layout& layout, std::vector<int> allowed) const {
  const KeyRange range = ShardRange(layout.size(), options_.shard_index, options_.shard_count);
  return PushRules{layout.size(), range.begin, range.end, options_.chunk_bytes, std::move(allowed)};
}

void ServiceHandler::Attach(const Layout& layout, ParameterStore* store, Membership* membership,
                            Aggregator* aggregator, VersionWaitList* wait_list) {
  const KeyRange range = ShardRange(layout.size(), options_.shard_index, options_.shard_count);
  components_ = Components{layout,
                           range,
                           RulesFor(layout, {options_.training.allowed_encodings().begin(),
                                             options_.training.allowed_encodings().end()}),
                           store,
                           membership,
                           aggregator,
                           wait_list};
  state_.store(State::kReady, std::memory_order_release);
}

void ServiceHandler::AwaitModel() {
  State loading = State::kLoading;
  state_.compare_exchange_strong(loading, State::kAwaitingModel, std::memory_order_acq_rel);
}

absl::Status ServiceHandler::CheckLoaded() const {
  if (state_.load(std::memory_order_acquire) == State::kLoading) {
    return absl::UnavailableError("the server is loading its model; retry shortly");
  }
  return absl::OkStatus();
}

absl::StatusOr<const ServiceHandler::Components*> ServiceHandler::Ready(uint64_t worker_id) const {
  switch (state_.load(std::memory_order_acquire)) {
    case State::kReady:
      return &components_;
    case State::kAwaitingModel:
      if (worker_id != 0) {
        return absl::NotFoundError(absl::StrFormat(
            "this server does not know worker %d: it has no model (it restarted without a "
            "checkpoint); join again, with a layout and the model you hold",
            worker_id));
      }
      return absl::UnavailableError(
          "the server has no model yet: it waits for a worker to join with a layout and upload "
          "its initial values; retry shortly");
    case State::kLoading:
      break;
  }
  return absl::UnavailableError("the server is loading its model; retry shortly");
}

void ServiceHandler::NoteAuthRefused(absl::string_view peer, const absl::Status& status) {
  ++refused_auth_;
  LogWarning(absl::StrFormat("event=auth_refused peer=%s code=%s msg=\"%s\"", LogSafe(peer),
                             absl::StatusCodeToString(status.code()),
                             LogSafe(status.message(), 1024)));
}

absl::Status ServiceHandler::CheckIdentity(const Components& c, uint64_t id, const Caller& caller) {
  absl::Status s = c.membership->CheckIdentity(id, caller.identity);
  if (s.code() == absl::StatusCode::kPermissionDenied) {
    ++refused_auth_;
    LogWarning(absl::StrFormat("event=auth_refused identity=%s worker_id=%d msg=\"%s\"",
                               LogSafe(caller.identity), id, LogSafe(s.message(), 1024)));
  }
  return s;
}

absl::StatusOr<v1::JoinResponse> ServiceHandler::Join(const Caller& caller,
                                                      const v1::JoinRequest& request) {
  PS_RETURN_IF_ERROR(CheckLoaded());
  if (request.worker_name().size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrFormat("worker_name is %d bytes; at most 256", request.worker_name().size()));
  }
  std::optional<Layout> theirs;
  if (request.has_layout()) {
    absl::StatusOr<Layout> layout = Layout::FromProto(request.layout());
    if (!layout.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the Join's layout: ", layout.status().message()));
    }
    theirs = *std::move(layout);
  }
  absl::StatusOr<const Components*> ready = Ready();
  if (!ready.ok()) return JoinWithoutModel(request, theirs ? &*theirs : nullptr);
  const Components* c = *ready;
  if (theirs.has_value()) {
    if (absl::Status s = CheckSameLayout(c->layout, *theirs, "the server's"); !s.ok()) {
      LogWarning(absl::StrFormat("event=join_refused name=\"%s\" peer=%s code=%s msg=\"%s\"",
                                 LogSafe(request.worker_name()), LogSafe(caller.peer),
                                 absl::StatusCodeToString(s.code()), LogSafe(s.message(), 1024)));
      return s;
    }
  }
  // Unset means any free rank; so does -1 (clients written before the field had presence).
  const int rank = request.has_requested_rank() ? request.requested_rank() : -1;
  std::vector<Member> replaced;
  absl::StatusOr<Member> member =
      c->membership->Join(request.worker_name(), rank, caller.identity, &replaced);
  if (!member.ok()) {
    LogWarning(absl::StrFormat("event=join_refused name=\"%s\" peer=%s code=%s msg=\"%s\"",
                               LogSafe(request.worker_name()), LogSafe(caller.peer),
                               absl::StatusCodeToString(member.status().code()),
                               LogSafe(member.status().message(), 1024)));
    return member.status();
  }
  for (const Member& old : replaced) {
    LogInfo(absl::StrFormat("event=member_replaced worker_id=%d rank=%d identity=%s", old.id,
                            old.rank, LogSafe(old.identity)));
  }
  v1::JoinResponse response;
  response.set_worker_id(member->id);
  response.set_rank(member->rank);
  response.set_lease_ms(absl::ToInt64Milliseconds(c->membership->lease()));
  response.set_model_size(c->layout.size());
  response.set_shard_begin(c->range.begin);
  response.set_shard_end(c->range.end);
  response.set_shard_index(options_.shard_index);
  response.set_shard_count(options_.shard_count);
  response.set_version(c->store->version());
  *response.mutable_config() = options_.training;
  response.set_max_chunk_bytes(static_cast<uint32_t>(options_.chunk_bytes));
  *response.mutable_layout() = c->layout.ToProto();
  LogInfo(absl::StrFormat("event=join worker_id=%d rank=%d name=\"%s\" peer=%s members=%d",
                          member->id, member->rank, LogSafe(member->name), LogSafe(caller.peer),
                          c->membership->size()));
  return response;
}

// No model yet: the caller is told so (with the shard's range of its layout, which it uploads)
// and is not made a member; it joins again once there is a model.
absl::StatusOr<v1::JoinResponse> ServiceHandler::JoinWithoutModel(const v1::JoinRequest& request,
                                                                  const Layout* theirs) {
  const Layout& required = options_.required_layout;
  if (theirs != nullptr && !required.empty()) {
    PS_RETURN_IF_ERROR(CheckSameLayout(required, *theirs, "the server's --layout"));
  }
  const Layout* layout = theirs != nullptr ? theirs : required.empty() ? nullptr : &required;
  v1::JoinResponse response;
  response.set_initial_model_needed(true);
  response.set_shard_index(options_.shard_index);
  response.set_shard_count(options_.shard_count);
  *response.mutable_config() = options_.training;
  response.set_max_chunk_bytes(static_cast<uint32_t>(options_.chunk_bytes));
  if (layout != nullptr) {
    const KeyRange range = ShardRange(layout->size(), options_.shard_index, options_.shard_count);
    response.set_model_size(layout->size());
    response.set_shard_begin(range.begin);
    response.set_shard_end(range.end);
    *response.mutable_layout() = layout->ToProto();
  }
  return response;
}

absl::Status ServiceHandler::CheckEval(const Components& c, const v1::EvalReport& eval) const {
  if (!std::isfinite(eval.test_loss()) || eval.test_loss() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.test_loss is ", eval.test_loss(), "; it must be finite and >= 0"));
  }
  if (!(eval.test_accuracy() >= 0 && eval.test_accuracy() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.test_accuracy is ", eval.test_accuracy(), "; it must be in [0, 1]"));
  }
  if (eval.version() == 0) {
    return absl::InvalidArgumentError("eval.version is 0: no model was evaluated");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::HeartbeatResponse> ServiceHandler::Heartbeat(
    const Caller& caller, const v1::HeartbeatRequest& request) {
  PS_ASSIGN_OR_RETURN(const Components* c, Ready(request.worker_id()));
  PS_RETURN_IF_ERROR(CheckIdentity(*c, request.worker_id(), caller));
  if (request.has_eval()) PS_RETURN_IF_ERROR(CheckEval(*c, request.eval()));
  PS_RETURN_IF_ERROR(c->membership->Touch(request.worker_id()));
  if (request.has_eval()) {
    // A worker of several shards reports one version, which may be ahead of this shard's (async
    // shards drift apart): it is kept, as this shard's version at most, so that a report from the
    // future can never stop later ones from replacing it.
    v1::EvalReport eval = request.eval();
    eval.set_version(std::min(eval.version(), c->store->version()));
    absl::MutexLock lock(&mu_);
    if (eval.version() >= last_eval_.version()) last_eval_ = eval;
  }
  v1::HeartbeatResponse response;
  response.set_version(c->store->version());
  return response;
}

absl::Status ServiceHandler::Leave(const Caller& caller, const v1::LeaveRequest& request) {
  PS_ASSIGN_OR_RETURN(const Components* c, Ready(request.worker_id()));
  PS_RETURN_IF_ERROR(CheckIdentity(*c, request.worker_id(), caller));
  PS_RETURN_IF_ERROR(c->membership->Leave(request.worker_id()));
  c->aggregator->Forget(request.worker_id());
  LogInfo(absl::StrFormat("event=leave worker_id=%d members=%d", request.worker_id(),
                          c->membership->size()));
  return absl::OkStatus();
}

void ServiceHandler::CloseRoundIfDue() {
  if (absl::StatusOr<const Components*> c = Ready(); c.ok()) (*c)->aggregator->MaybeCloseRound();
}

absl::StatusOr<v1::StatusResponse> ServiceHandler::Status(const Caller& caller) {
  PS_RETURN_IF_ERROR(CheckLoaded());
  return BuildStatus();
}

v1::StatusResponse ServiceHandler::BuildStatus() const {
  v1::StatusResponse status;
  status.set_mode(options_.training.mode());
  status.set_shard_index(options_.shard_index);
  status.set_shard_count(options_.shard_count);
  *status.mutable_config() = options_.training;
  status.set_updates_refused_limit(refused_limit_);
  status.set_calls_refused_auth(refused_auth_);
  status.set_calls_cancelled_idle(cancelled_idle_);
  status.set_pushes_in_progress(std::max(0, active_pushes_.load()));
  status.set_pulls_in_progress(std::max(0, active_pulls_.load()));
  status.set_push_buffer_bytes(push_buffers_.held());
  status.set_pushes_waited_for_buffer(push_buffers_.waited_total());
  wire_.ToProto(status.mutable_wire());
  absl::StatusOr<const Components*> ready = Ready();
  if (!ready.ok()) {
    if (!options_.required_layout.empty()) {
      status.set_model_size(options_.required_layout.size());
      *status.mutable_layout() = options_.required_layout.ToProto();
      status.set_layout_fingerprint(options_.required_layout.Fingerprint());
    }
    return status;
  }
  const Components& c = **ready;
  status.set_has_model(true);
  status.set_model_size(c.layout.size());
  *status.mutable_layout() = c.layout.ToProto();
  status.set_layout_fingerprint(c.layout.Fingerprint());
  status.set_version(c.store->version());
  const absl::Time now = absl::Now();
  for (const Member& m : c.membership->Members()) {
    v1::MemberStatus* out = status.add_members();
    out->set_worker_id(m.id);
    out->set_name(m.name);
    out->set_rank(m.rank);
    out->set_last_seen_ms_ago(std::max<int64_t>(0, absl::ToInt64Milliseconds(now - m.last_seen)));
    out->set_updates_accepted(m.updates_accepted);
  }
  const AggregatorStats stats = c.aggregator->stats();
  status.set_updates_applied(stats.applied);
  status.set_updates_refused_stale(stats.refused_stale);
  status.set_updates_refused_invalid(stats.refused_invalid + refused_at_stream_);
  status.set_updates_duplicate(stats.duplicate);
  status.set_rounds_completed(stats.rounds_completed);
  status.set_mean_pull_bits(c.store->mean_downlink_bits());
  status.set_last_train_loss(stats.last_train_loss);
  status.set_rounds_closed_complete(stats.rounds_closed_complete);
  status.set_rounds_closed_by_quorum(stats.rounds_closed_by_quorum);
  status.set_rounds_closed_by_deadline(stats.rounds_closed_by_deadline);
  status.set_rounds_abandoned(stats.rounds_abandoned);
  status.set_updates_late_dropped(stats.late_dropped);
  status.set_updates_late_folded(stats.late_folded);
  status.set_update_batches(stats.batches);
  status.set_largest_update_batch(stats.largest_batch);
  status.set_max_round_wait_ms(absl::ToInt64Milliseconds(stats.max_round_wait));
  status.set_last_round_wait_ms(absl::ToInt64Milliseconds(stats.last_round_wait));
  if (options_.add_status) options_.add_status(&status);
  absl::MutexLock lock(&mu_);
  *status.mutable_last_eval() = last_eval_;
  return status;
}

absl::StatusOr<PushAdmission> ServiceHandler::AdmitPush(const Caller& caller,
                                                        const v1::UpdateHeader& header) {
  if (header.kind() == v1::UPDATE_KIND_INITIAL_MODEL) return AdmitInitialUpload(header);
  PS_ASSIGN_OR_RETURN(const Components* c, Ready(header.worker_id()));
  PS_RETURN_IF_ERROR(CheckIdentity(*c, header.worker_id(), caller));
  PS_RETURN_IF_ERROR(c->membership->BeginCall(header.worker_id()));
  MemberCall member_call(c->membership, header.worker_id());
  const int limit = options_.max_concurrent_pushes;
  PushAdmission admission{CallSlot(&active_pushes_), c->rules, std::move(member_call)};
  if (++active_pushes_ > limit) {
    ++refused_limit_;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%d pushes are already being received (limit --max_concurrent_pushes); retry later",
        limit));
  }
  return admission;
}

absl::StatusOr<PushAdmission> ServiceHandler::AdmitInitialUpload(const v1::UpdateHeader& header) {
  if (absl::StatusOr<const Components*> c = Ready(); c.ok()) {
    return absl::AlreadyExistsError(
        absl::StrFormat("the server already has a model (version %d); join again to take it",
                        (*c)->store->version()));
  }
  PS_RETURN_IF_ERROR(CheckLoaded());
  if (header.encoding().encoding() != v1::ENCODING_FP32) {
    return absl::InvalidArgumentError("an initial model is uploaded as FP32");
  }
  absl::StatusOr<Layout> layout = Layout::FromProto(header.layout());
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the initial model's layout: ", layout.status().message()));
  }
  if (!options_.required_layout.empty()) {
    PS_RETURN_IF_ERROR(CheckSameLayout(options_.required_layout, *layout, "the server's --layout"));
  }
  PushRules rules = RulesFor(*layout, {v1::ENCODING_FP32});
  const uint64_t bytes = rules.shard_size() * sizeof(float);
  if (bytes > options_.max_model_bytes) {
    ++refused_limit_;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "this shard's part of the initial model is %d MiB, more than --max_model_mb=%d",
        bytes >> 20, options_.max_model_bytes >> 20));
  }
  // The slot is made only now: it gives back what the increment below takes.
  PushAdmission admission{CallSlot(&active_uploads_), std::move(rules), MemberCall()};
  if (++active_uploads_ > 1) {
    return absl::UnavailableError(
        "another worker is uploading the initial model; retry shortly (then join again)");
  }
  return admission;
}

absl::StatusOr<SubmitResult> ServiceHandler::SubmitPush(const v1::UpdateHeader& header,
                                                        absl::string_view payload) {
  if (header.kind() == v1::UPDATE_KIND_INITIAL_MODEL) return SubmitInitialUpload(header, payload);
  PS_ASSIGN_OR_RETURN(const Components* c, Ready());
  Update update;
  update.worker_id = header.worker_id();
  update.sequence = header.sequence();
  update.kind = header.kind();
  update.base_version = header.base_version();
  update.sample_count = header.sample_count();
  update.encoding = header.encoding();
  update.payload = payload;
  update.train_loss = header.train_loss();
  update.inner_learning_rate = header.learning_rate();
  absl::StatusOr<SubmitResult> result = c->aggregator->Submit(update);
  if (!result.ok()) {
    LogWarning(absl::StrFormat("event=push_refused worker_id=%d base_version=%d code=%s msg=\"%s\"",
                               update.worker_id, update.base_version,
                               absl::StatusCodeToString(result.status().code()),
                               LogSafe(result.status().message(), 1024)));
    return result;
  }
  wire_.raw_bytes_received += header.num_elements() * sizeof(float);
  return result;
}

// The whole payload arrived and the stream ended cleanly: checked, then installed as version 1,
// unless another upload got there first.
absl::StatusOr<SubmitResult> ServiceHandler::SubmitInitialUpload(const v1::UpdateHeader& header,
                                                                 absl::string_view payload) {
  PS_ASSIGN_OR_RETURN(Layout layout, Layout::FromProto(header.layout()));
  double max_abs = 0;
  PS_RETURN_IF_ERROR(ValidatePayload(header.encoding(), payload, header.num_elements(), &max_abs));
  if (max_abs > kMaxModelMagnitude) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the initial model has a coordinate of magnitude %g, past the largest a coordinate may "
        "have (%g)",
        max_abs, kMaxModelMagnitude));
  }
  std::vector<float> values(header.num_elements());
  std::memcpy(values.data(), payload.data(), payload.size());
  if (!options_.install_uploaded) return absl::InternalError("no way to install a model");
  PS_ASSIGN_OR_RETURN(uint64_t version,
                      options_.install_uploaded(layout, std::move(values), header.base_version()));
  wire_.raw_bytes_received += header.num_elements() * sizeof(float);
  LogInfo(absl::StrFormat("event=initial_model_uploaded layout=\"%s\" fingerprint=%s version=%d",
                          LogSafe(layout.Summary(), 1024), layout.Fingerprint(), version));
  return SubmitResult{/*duplicate=*/false, /*folded=*/false, version};
}

void ServiceHandler::NoteRefusedPush(const Caller& caller, const absl::Status& status) {
  ++refused_at_stream_;
  LogWarning(absl::StrFormat("event=push_refused peer=%s code=%s msg=\"%s\"", LogSafe(caller.peer),
                             absl::StatusCodeToString(status.code()),
                             LogSafe(status.message(), 1024)));
}

absl::StatusOr<PullAdmission> ServiceHandler::AdmitPull(const Caller& caller,
                                                        const v1::PullRequest& request) {
  PS_ASSIGN_OR_RETURN(const Components* c, Ready(request.worker_id()));
  PullAdmission admission;
  admission.slot = CallSlot(&active_pulls_);
  const int limit = options_.max_pending_pulls;
  if (++active_pulls_ > limit) {
    ++refused_limit_;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%d pulls are already waiting or streaming (limit --max_pending_pulls); retry later",
        limit));
  }
  if (request.worker_id() != 0) {
    PS_RETURN_IF_ERROR(CheckIdentity(*c, request.worker_id(), caller));
    PS_RETURN_IF_ERROR(c->membership->BeginCall(request.worker_id()));
    admission.member_call = MemberCall(c->membership, request.worker_id());
  }
  const auto& accept = request.accept_encodings();
  if (!accept.empty() &&
      std::find(accept.begin(), accept.end(), v1::ENCODING_FP32) == accept.end()) {
    return absl::InvalidArgumentError(
        "accept_encodings must include ENCODING_FP32 (full models are always sent as FP32)");
  }
  // A client that claims a version from the future (say, after the server restarted without
  // its state) gets the current model rather than a wait that might never end.
  admission.have_version =
      request.have_version() > c->store->version() ? 0 : request.have_version();
  admission.deadline =
      absl::Now() + std::min(absl::Milliseconds(request.max_wait_ms()), options_.max_pull_wait);
  return admission;
}

bool ServiceHandler::WaitForNewer(uint64_t have_version, absl::Time deadline,
                                  VersionWaitList::Waiter* waiter) {
  absl::StatusOr<const Components*> c = Ready();
  return c.ok() && (*c)->wait_list->WaitForNewer(have_version, deadline, waiter);
}

bool ServiceHandler::CancelWait(VersionWaitList::Waiter* waiter) {
  absl::StatusOr<const Components*> c = Ready();
  return c.ok() && (*c)->wait_list->Cancel(waiter);
}

namespace {

// Deltas reach a client that holds a version some delta of the chain starts at (a batch's delta
// spans several versions, so not every version in the chain's span is one), and that can decode.
bool CanSendDeltas(const ModelSnapshot& snapshot, uint64_t have_version,
                   const std::vector<int>& accept) {
  if (have_version == 0) return false;
  if (std::none_of(snapshot.deltas.begin(), snapshot.deltas.end(),
                   [&](const DownlinkDelta& d) { return d.base_version == have_version; })) {
    return false;
  }
  const v1::Encoding e = snapshot.deltas.front().encoding.encoding();
  return std::find(accept.begin(), accept.end(), e) != accept.end();
}

}  // namespace

PullPlan ServiceHandler::PlanPull(uint64_t have_version, const std::vector<int>& accept,
                                  absl::Time started) {
  pull_wait_.Observe(absl::ToDoubleSeconds(absl::Now() - started));
  PullPlan plan;
  absl::StatusOr<const Components*> c = Ready();
  if (!c.ok()) return plan;  // not reached: pulls are planned only once admitted
  plan.snapshot = (*c)->store->Snapshot();
  const ModelSnapshot& snapshot = plan.snapshot;
  const uint64_t d = (*c)->range.size();
  if (snapshot.version <= have_version) {
    // Only possible when timed out (or shutting down): nothing newer to send.
    PullSegment unchanged;
    unchanged.header.set_kind(v1::ModelHeader::KIND_UNCHANGED);
    unchanged.header.set_version(snapshot.version);
    unchanged.header.set_num_elements(d);
    plan.segments.push_back(unchanged);
  } else if (CanSendDeltas(snapshot, have_version, accept)) {
    for (const DownlinkDelta& delta : snapshot.deltas) {
      if (delta.base_version < have_version) continue;
      PullSegment s;
      s.header.set_kind(v1::ModelHeader::KIND_DELTA);
      s.header.set_version(delta.version);
      s.header.set_base_version(delta.base_version);
      *s.header.mutable_encoding() = delta.encoding;
      s.header.set_num_elements(d);
      s.header.set_payload_bytes(delta.payload->size());
      s.data = delta.payload->data();
      s.size = delta.payload->size();
      plan.segments.push_back(s);
    }
    // What a plain pull would have sent: the model once, however many deltas make up the chain.
    wire_.raw_bytes_sent += d * sizeof(float);
  } else {
    PullSegment full;
    full.header.set_kind(v1::ModelHeader::KIND_FULL);
    full.header.set_version(snapshot.version);
    full.header.mutable_encoding()->set_encoding(v1::ENCODING_FP32);
    full.header.set_num_elements(snapshot.values->size());
    full.header.set_payload_bytes(snapshot.values->size() * sizeof(float));
    full.data = reinterpret_cast<const char*>(snapshot.values->data());
    full.size = full.header.payload_bytes();
    plan.segments.push_back(full);
    wire_.raw_bytes_sent += full.size;
  }
  return plan;
}

}  // namespace ps
