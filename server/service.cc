#include "server/service.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunking.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/logging.h"

namespace ps {

void WireCounters::ToProto(v1::WireCounters* out) const {
  out->set_bytes_received(bytes_received);
  out->set_bytes_sent(bytes_sent);
  out->set_payload_bytes_received(payload_bytes_received);
  out->set_payload_bytes_sent(payload_bytes_sent);
  out->set_raw_bytes_received(raw_bytes_received);
  out->set_raw_bytes_sent(raw_bytes_sent);
}

ParameterServerService::ParameterServerService(const ServiceOptions& options, ThreadPool* pool,
                                               const Authenticator* auth)
    : options_(options),
      pool_(pool),
      auth_(auth),
      push_rules_{options.model_size, options.shard_begin, options.shard_end, options.chunk_bytes,
                  std::vector<int>(options.training.allowed_encodings().begin(),
                                   options.training.allowed_encodings().end())} {}

void ParameterServerService::Attach(ParameterStore* store, Membership* membership,
                                    Aggregator* aggregator, VersionWaitList* wait_list) {
  store_ = store;
  membership_ = membership;
  aggregator_ = aggregator;
  wait_list_ = wait_list;
  ready_.store(true, std::memory_order_release);
}

absl::StatusOr<std::string> ParameterServerService::Admit(
    const grpc::CallbackServerContext& context) {
  if (!ready_.load(std::memory_order_acquire)) {
    return absl::UnavailableError("the server is loading its model; retry shortly");
  }
  absl::StatusOr<std::string> identity = auth_->Authenticate(context);
  if (!identity.ok()) {
    ++refused_auth_;
    LogWarning(absl::StrFormat("event=auth_refused peer=%s code=%s msg=\"%s\"", context.peer(),
                               absl::StatusCodeToString(identity.status().code()),
                               identity.status().message()));
  }
  return identity;
}

absl::Status ParameterServerService::CheckIdentity(uint64_t id, const std::string& identity) {
  absl::Status s = membership_->CheckIdentity(id, identity);
  if (s.code() == absl::StatusCode::kPermissionDenied) {
    ++refused_auth_;
    LogWarning(absl::StrFormat("event=auth_refused identity=%s worker_id=%d msg=\"%s\"", identity,
                               id, s.message()));
  }
  return s;
}

grpc::ServerUnaryReactor* ParameterServerService::Join(grpc::CallbackServerContext* context,
                                                       const v1::JoinRequest* request,
                                                       v1::JoinResponse* response) {
  wire_.bytes_received += request->ByteSizeLong();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> identity = Admit(*context);
  if (!identity.ok()) {
    reactor->Finish(ToGrpcStatus(identity.status()));
    return reactor;
  }
  if (request->worker_name().size() > 256) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("worker_name is over 256 bytes")));
    return reactor;
  }
  std::vector<Member> replaced;
  absl::StatusOr<Member> member =
      membership_->Join(request->worker_name(), request->requested_rank(), *identity, &replaced);
  for (const Member& old : replaced) {
    LogInfo(absl::StrFormat("event=member_replaced worker_id=%d rank=%d identity=%s", old.id,
                            old.rank, old.identity));
  }
  if (!member.ok()) {
    LogWarning(absl::StrCat("join refused: name=", request->worker_name(),
                            " peer=", context->peer(), " error=", member.status().ToString()));
    reactor->Finish(ToGrpcStatus(member.status()));
    return reactor;
  }
  response->set_worker_id(member->id);
  response->set_rank(member->rank);
  response->set_lease_ms(absl::ToInt64Milliseconds(membership_->lease()));
  response->set_model_size(options_.model_size);
  response->set_shard_begin(options_.shard_begin);
  response->set_shard_end(options_.shard_end);
  response->set_shard_index(options_.shard_index);
  response->set_shard_count(options_.shard_count);
  response->set_version(store_->version());
  *response->mutable_config() = options_.training;
  response->set_max_chunk_bytes(static_cast<uint32_t>(options_.chunk_bytes));
  wire_.bytes_sent += response->ByteSizeLong();
  LogInfo(absl::StrFormat("event=join worker_id=%d rank=%d name=%s peer=%s members=%d", member->id,
                          member->rank, member->name, context->peer(), membership_->size()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ParameterServerService::Heartbeat(grpc::CallbackServerContext* context,
                                                            const v1::HeartbeatRequest* request,
                                                            v1::HeartbeatResponse* response) {
  wire_.bytes_received += request->ByteSizeLong();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> identity = Admit(*context);
  absl::Status touched = identity.status();
  if (touched.ok()) touched = CheckIdentity(request->worker_id(), *identity);
  if (touched.ok()) touched = membership_->Touch(request->worker_id());
  if (touched.ok() && request->has_eval()) {
    absl::MutexLock lock(&mu_);
    if (request->eval().version() >= last_eval_.version()) last_eval_ = request->eval();
  }
  response->set_version(store_->version());
  wire_.bytes_sent += response->ByteSizeLong();
  reactor->Finish(ToGrpcStatus(touched));
  return reactor;
}

grpc::ServerUnaryReactor* ParameterServerService::Leave(grpc::CallbackServerContext* context,
                                                        const v1::LeaveRequest* request,
                                                        v1::LeaveResponse* response) {
  wire_.bytes_received += request->ByteSizeLong();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> identity = Admit(*context);
  absl::Status left = identity.status();
  if (left.ok()) left = CheckIdentity(request->worker_id(), *identity);
  if (left.ok()) left = membership_->Leave(request->worker_id());
  if (!left.ok()) {
    reactor->Finish(ToGrpcStatus(left));
    return reactor;
  }
  LogInfo(absl::StrFormat("event=leave worker_id=%d members=%d", request->worker_id(),
                          membership_->size()));
  // The round may now be complete; closing it averages the whole model, so not on this thread.
  pool_->Schedule([this, reactor] {
    aggregator_->MaybeCloseRound();
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* ParameterServerService::Status(grpc::CallbackServerContext* context,
                                                         const v1::StatusRequest* request,
                                                         v1::StatusResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> identity = Admit(*context);
  if (!identity.ok()) {
    reactor->Finish(ToGrpcStatus(identity.status()));
    return reactor;
  }
  *response = BuildStatus();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

v1::StatusResponse ParameterServerService::BuildStatus() const {
  v1::StatusResponse status;
  status.set_version(store_->version());
  status.set_mode(options_.training.mode());
  status.set_model_size(options_.model_size);
  status.set_shard_index(options_.shard_index);
  status.set_shard_count(options_.shard_count);
  *status.mutable_config() = options_.training;
  const absl::Time now = absl::Now();
  for (const Member& m : membership_->Members()) {
    v1::MemberStatus* out = status.add_members();
    out->set_worker_id(m.id);
    out->set_name(m.name);
    out->set_rank(m.rank);
    out->set_last_seen_ms_ago(std::max<int64_t>(0, absl::ToInt64Milliseconds(now - m.last_seen)));
    out->set_updates_accepted(m.updates_accepted);
  }
  const AggregatorStats stats = aggregator_->stats();
  status.set_updates_applied(stats.applied);
  status.set_updates_refused_stale(stats.refused_stale);
  status.set_updates_refused_invalid(stats.refused_invalid + refused_at_stream_);
  status.set_updates_duplicate(stats.duplicate);
  status.set_rounds_completed(stats.rounds_completed);
  status.set_mean_pull_bits(store_->mean_downlink_bits());
  status.set_last_train_loss(stats.last_train_loss);
  status.set_rounds_closed_complete(stats.rounds_closed_complete);
  status.set_rounds_closed_by_quorum(stats.rounds_closed_by_quorum);
  status.set_rounds_closed_by_deadline(stats.rounds_closed_by_deadline);
  status.set_rounds_abandoned(stats.rounds_abandoned);
  status.set_updates_late_dropped(stats.late_dropped);
  status.set_updates_late_folded(stats.late_folded);
  status.set_max_round_wait_ms(absl::ToInt64Milliseconds(stats.max_round_wait));
  status.set_last_round_wait_ms(absl::ToInt64Milliseconds(stats.last_round_wait));
  status.set_updates_refused_limit(refused_limit_);
  status.set_calls_refused_auth(refused_auth_);
  status.set_pushes_in_progress(std::max(0, active_pushes_.load()));
  status.set_pulls_in_progress(std::max(0, active_pulls_.load()));
  if (options_.add_status) options_.add_status(&status);
  wire_.ToProto(status.mutable_wire());
  absl::MutexLock lock(&mu_);
  *status.mutable_last_eval() = last_eval_;
  return status;
}

std::string ParameterServerService::TakeBuffer() {
  absl::MutexLock lock(&mu_);
  if (free_buffers_.empty()) return {};
  std::string buffer = std::move(free_buffers_.back());
  free_buffers_.pop_back();
  return buffer;
}

void ParameterServerService::ReturnBuffer(std::string buffer) {
  // As many buffers as pushes that can be decoded at once, plus one being received.
  const size_t keep = static_cast<size_t>(options_.max_pooled_buffers);
  absl::MutexLock lock(&mu_);
  if (buffer.capacity() > 0 && free_buffers_.size() < keep)
    free_buffers_.push_back(std::move(buffer));
}

// Reads the chunks of one update into a PushAssembly; when the client half-closes, hands the
// complete update to the Aggregator on the pool. Any error finishes the call at once and nothing
// of the update is applied.
class ParameterServerService::PushReactor : public grpc::ServerReadReactor<v1::UpdateChunk> {
 public:
  PushReactor(ParameterServerService* service, grpc::CallbackServerContext* context,
              v1::PushAck* ack)
      : service_(service),
        context_(context),
        ack_(ack),
        assembly_(
            service->push_rules_,
            [this](const v1::UpdateHeader& header) { return AcceptHeader(header); },
            service->TakeBuffer()) {
    absl::StatusOr<std::string> identity = service_->Admit(*context);
    if (!identity.ok()) {
      FinishCall(ToGrpcStatus(identity.status()));
      return;
    }
    identity_ = *std::move(identity);
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      OnStreamEnd();
      return;
    }
    service_->wire_.bytes_received += chunk_.ByteSizeLong();
    service_->wire_.payload_bytes_received += chunk_.data().size();
    if (absl::Status s = assembly_.Add(chunk_); !s.ok()) return Refuse(s);
    StartRead(&chunk_);
  }

  void OnCancel() override { cancelled_ = true; }
  void OnDone() override {
    if (counted_.exchange(false)) --service_->active_pushes_;
    service_->ReturnBuffer(assembly_.TakeBuffer());
    delete this;
  }

 private:
  // Runs once the header passed the shard's rules, before any payload is buffered.
  absl::Status AcceptHeader(const v1::UpdateHeader& header) {
    if (absl::Status s = service_->CheckIdentity(header.worker_id(), identity_); !s.ok()) return s;
    if (!service_->membership_->IsMember(header.worker_id())) {
      return NotAMemberError(header.worker_id());
    }
    const int limit = service_->options_.max_concurrent_pushes;
    if (++service_->active_pushes_ > limit) {
      --service_->active_pushes_;
      ++service_->refused_limit_;
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%d pushes are already being received (limit --max_concurrent_pushes); retry later",
          limit));
    }
    counted_ = true;
    return absl::OkStatus();
  }

  void OnStreamEnd() {
    if (cancelled_) {
      // A stream cancelled halfway is never applied, even if every byte had arrived.
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "push cancelled by the client"));
      return;
    }
    if (absl::Status s = assembly_.Finish(); !s.ok()) return Refuse(s);
    service_->pool_->Schedule([this] { Submit(); });
  }

  void Submit() {
    const v1::UpdateHeader& header = assembly_.header();
    Update update;
    update.worker_id = header.worker_id();
    update.sequence = header.sequence();
    update.kind = header.kind();
    update.base_version = header.base_version();
    update.sample_count = header.sample_count();
    update.encoding = header.encoding();
    update.payload = assembly_.payload();
    update.train_loss = header.train_loss();
    absl::StatusOr<SubmitResult> result = service_->aggregator_->Submit(update);
    if (!result.ok()) {
      LogWarning(absl::StrFormat(
          "event=push_refused worker_id=%d base_version=%d code=%s msg=\"%s\"", update.worker_id,
          update.base_version, absl::StatusCodeToString(result.status().code()),
          result.status().message()));
      FinishCall(ToGrpcStatus(result.status()));
      return;
    }
    service_->wire_.raw_bytes_received += header.num_elements() * sizeof(float);
    ack_->set_result(result->duplicate ? v1::PushAck::RESULT_DUPLICATE
                     : result->folded  ? v1::PushAck::RESULT_FOLDED
                                       : v1::PushAck::RESULT_APPLIED);
    ack_->set_version(result->version);
    service_->wire_.bytes_sent += ack_->ByteSizeLong();
    FinishCall(grpc::Status::OK);
  }

  void Refuse(const absl::Status& status) {
    ++service_->refused_at_stream_;
    LogWarning(absl::StrFormat("event=push_refused peer=%s code=%s msg=\"%s\"", context_->peer(),
                               absl::StatusCodeToString(status.code()), status.message()));
    FinishCall(ToGrpcStatus(status));
  }

  // Frees the push's place under max_concurrent_pushes before the client hears the outcome, so
  // that its next push never finds the place still taken.
  void FinishCall(const grpc::Status& status) {
    if (counted_.exchange(false)) --service_->active_pushes_;
    Finish(status);
  }

  ParameterServerService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::PushAck* const ack_;
  std::string identity_;
  v1::UpdateChunk chunk_;
  PushAssembly assembly_;
  std::atomic<bool> counted_{false};  // holds one of the max_concurrent_pushes places
  std::atomic<bool> cancelled_{false};
};

grpc::ServerReadReactor<v1::UpdateChunk>* ParameterServerService::Push(
    grpc::CallbackServerContext* context, v1::PushAck* ack) {
  return new PushReactor(this, context, ack);
}

// Waits in the VersionWaitList until the model is newer than the client's, then streams it in
// chunks, one write in flight; or answers "unchanged" when the wait runs out.
class ParameterServerService::PullReactor : public grpc::ServerWriteReactor<v1::ModelChunk>,
                                            public VersionWaitList::Waiter {
 public:
  PullReactor(ParameterServerService* service, grpc::CallbackServerContext* context,
              const v1::PullRequest* request)
      : service_(service),
        have_version_(request->have_version()),
        accept_(request->accept_encodings().begin(), request->accept_encodings().end()) {
    ++service_->active_pulls_;
    counted_ = true;
    if (absl::Status s = Check(*context, *request); !s.ok()) {
      FinishCall(ToGrpcStatus(s));
      return;
    }
    absl::Duration wait =
        std::min(absl::Milliseconds(request->max_wait_ms()), service_->options_.max_pull_wait);
    // A client that claims a version from the future (say, after the server restarted without
    // its state) gets the current model rather than a wait that might never end.
    if (have_version_ > service_->store_->version()) have_version_ = 0;
    if (!service_->wait_list_->WaitForNewer(have_version_, absl::Now() + wait, this)) {
      Send();
    }
  }

  // Timed out or not, Send answers with whatever is current: a newer model or "unchanged".
  void OnReady(bool /*timed_out*/) override { Send(); }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "pull stream broken"));
      return;
    }
    NextChunk();
  }

  void OnCancel() override {
    if (service_->wait_list_->Cancel(this)) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "pull cancelled while waiting"));
    }
  }
  void OnDone() override {
    if (counted_.exchange(false)) --service_->active_pulls_;
    delete this;
  }

 private:
  // Frees the pull's place under max_pending_pulls before the client hears the outcome.
  void FinishCall(const grpc::Status& status) {
    if (counted_.exchange(false)) --service_->active_pulls_;
    Finish(status);
  }

  absl::Status Check(const grpc::CallbackServerContext& context, const v1::PullRequest& request) {
    absl::StatusOr<std::string> identity = service_->Admit(context);
    if (!identity.ok()) return identity.status();
    const int limit = service_->options_.max_pending_pulls;
    if (service_->active_pulls_ > limit) {
      ++service_->refused_limit_;
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%d pulls are already waiting or streaming (limit --max_pending_pulls); retry later",
          limit));
    }
    if (request.worker_id() != 0) {
      if (absl::Status s = service_->CheckIdentity(request.worker_id(), *identity); !s.ok()) {
        return s;
      }
      if (absl::Status s = service_->membership_->Touch(request.worker_id()); !s.ok()) return s;
    }
    const auto& accept = request.accept_encodings();
    if (!accept.empty() &&
        std::find(accept.begin(), accept.end(), v1::ENCODING_FP32) == accept.end()) {
      return absl::InvalidArgumentError(
          "accept_encodings must include ENCODING_FP32 (full models are always sent as FP32)");
    }
    return absl::OkStatus();
  }

  // One full model, or the chain of deltas from the client's version (ALGORITHMS.md section 9),
  // or "unchanged": a list of segments, each starting with a chunk that carries its header.
  struct Segment {
    v1::ModelHeader header;
    const char* data = nullptr;
    uint64_t size = 0;
  };

  void Send() {
    service_->pull_wait_.Observe(absl::ToDoubleSeconds(absl::Now() - started_));
    snapshot_ = service_->store_->Snapshot();
    segments_.clear();
    const uint64_t d = service_->shard_size();
    if (snapshot_.version <= have_version_) {
      // Only possible when timed out (or shutting down): nothing newer to send.
      Segment unchanged;
      unchanged.header.set_kind(v1::ModelHeader::KIND_UNCHANGED);
      unchanged.header.set_version(snapshot_.version);
      unchanged.header.set_num_elements(d);
      segments_.push_back(unchanged);
    } else if (CanSendDeltas()) {
      for (const DownlinkDelta& delta : snapshot_.deltas) {
        if (delta.base_version < have_version_) continue;
        Segment s;
        s.header.set_kind(v1::ModelHeader::KIND_DELTA);
        s.header.set_version(delta.version);
        s.header.set_base_version(delta.base_version);
        *s.header.mutable_encoding() = delta.encoding;
        s.header.set_num_elements(d);
        s.header.set_payload_bytes(delta.payload->size());
        s.data = delta.payload->data();
        s.size = delta.payload->size();
        segments_.push_back(s);
      }
      // What a plain pull would have sent: the model once, however many deltas make up the chain.
      service_->wire_.raw_bytes_sent += d * sizeof(float);
    } else {
      Segment full;
      full.header.set_kind(v1::ModelHeader::KIND_FULL);
      full.header.set_version(snapshot_.version);
      full.header.mutable_encoding()->set_encoding(v1::ENCODING_FP32);
      full.header.set_num_elements(snapshot_.values->size());
      full.header.set_payload_bytes(snapshot_.values->size() * sizeof(float));
      full.data = reinterpret_cast<const char*>(snapshot_.values->data());
      full.size = full.header.payload_bytes();
      segments_.push_back(full);
      service_->wire_.raw_bytes_sent += full.size;
    }
    segment_ = 0;
    StartSegment();
  }

  // Deltas reach a client that holds a version the chain starts at or after, and that can decode.
  bool CanSendDeltas() const {
    if (have_version_ == 0 || snapshot_.deltas.empty()) return false;
    if (snapshot_.deltas.front().base_version > have_version_) return false;
    const v1::Encoding e = snapshot_.deltas.front().encoding.encoding();
    return std::find(accept_.begin(), accept_.end(), e) != accept_.end();
  }

  void StartSegment() {
    const Segment& s = segments_[segment_];
    ranges_ = ChunkRanges(s.size, service_->options_.chunk_bytes);
    next_range_ = 0;
    chunk_.Clear();
    *chunk_.mutable_header() = s.header;
    FillAndWrite();
  }

  // Writes chunk_ (whose header, if any, is set) with the next range of the current segment.
  void FillAndWrite() {
    const Segment& s = segments_[segment_];
    const ByteRange r = ranges_[next_range_++];
    chunk_.set_offset(r.offset);
    if (r.size > 0) chunk_.set_data(s.data + r.offset, r.size);
    service_->wire_.bytes_sent += chunk_.ByteSizeLong();
    service_->wire_.payload_bytes_sent += chunk_.data().size();
    StartWrite(&chunk_);
  }

  void NextChunk() {
    if (next_range_ < ranges_.size()) {
      chunk_.Clear();
      FillAndWrite();
    } else if (++segment_ < segments_.size()) {
      StartSegment();
    } else {
      FinishCall(grpc::Status::OK);
    }
  }

  ParameterServerService* const service_;
  const absl::Time started_ = absl::Now();
  uint64_t have_version_;
  std::vector<int> accept_;  // v1::Encoding values
  ModelSnapshot snapshot_;
  std::vector<Segment> segments_;
  size_t segment_ = 0;
  std::vector<ByteRange> ranges_;
  size_t next_range_ = 0;
  v1::ModelChunk chunk_;
  std::atomic<bool> counted_{false};  // holds one of the max_pending_pulls places
};

grpc::ServerWriteReactor<v1::ModelChunk>* ParameterServerService::Pull(
    grpc::CallbackServerContext* context, const v1::PullRequest* request) {
  wire_.bytes_received += request->ByteSizeLong();
  return new PullReactor(this, context, request);
}

}  // namespace ps
