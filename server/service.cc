#include "server/service.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunking.h"
#include "common/happens_before.h"
#include "common/logging.h"
#include "rpc/grpc_status.h"

namespace ps {

ParameterServerService::ParameterServerService(ServiceHandler* handler, ThreadPool* pool,
                                               const Authenticator* auth)
    : handler_(handler), pool_(pool), auth_(auth) {}

ParameterServerService::~ParameterServerService() { absl::MutexLock lock(&mu_); }

absl::StatusOr<Caller> ParameterServerService::Authenticate(
    const grpc::CallbackServerContext& context) {
  absl::StatusOr<std::string> identity = auth_->Authenticate(context);
  if (!identity.ok()) {
    handler_->NoteAuthRefused(context.peer(), identity.status());
    return identity.status();
  }
  return Caller{*std::move(identity), context.peer()};
}

namespace {

// The unary calls: authenticate, run the handler, answer. `call` returns StatusOr<Response>.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 absl::StatusOr<Caller> caller, Response* response,
                                 WireCounters& wire, Call call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Response> result =
      caller.ok() ? call(*caller) : absl::StatusOr<Response>(caller.status());
  if (result.ok()) {
    *response = *std::move(result);
    wire.bytes_sent += response->ByteSizeLong();
  }
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ParameterServerService::Join(grpc::CallbackServerContext* context,
                                                       const v1::JoinRequest* request,
                                                       v1::JoinResponse* response) {
  handler_->wire().bytes_received += request->ByteSizeLong();
  return Answer(context, Authenticate(*context), response, handler_->wire(),
                [&](const Caller& c) { return handler_->Join(c, *request); });
}

grpc::ServerUnaryReactor* ParameterServerService::Heartbeat(grpc::CallbackServerContext* context,
                                                            const v1::HeartbeatRequest* request,
                                                            v1::HeartbeatResponse* response) {
  handler_->wire().bytes_received += request->ByteSizeLong();
  return Answer(context, Authenticate(*context), response, handler_->wire(),
                [&](const Caller& c) { return handler_->Heartbeat(c, *request); });
}

grpc::ServerUnaryReactor* ParameterServerService::Status(grpc::CallbackServerContext* context,
                                                         const v1::StatusRequest* request,
                                                         v1::StatusResponse* response) {
  return Answer(context, Authenticate(*context), response, handler_->wire(),
                [&](const Caller& c) { return handler_->Status(c); });
}

grpc::ServerUnaryReactor* ParameterServerService::Leave(grpc::CallbackServerContext* context,
                                                        const v1::LeaveRequest* request,
                                                        v1::LeaveResponse* response) {
  handler_->wire().bytes_received += request->ByteSizeLong();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Authenticate(*context);
  absl::Status left = caller.ok() ? handler_->Leave(*caller, *request) : caller.status();
  if (!left.ok()) {
    reactor->Finish(ToGrpcStatus(left));
    return reactor;
  }
  // Closing the round the member was waited for averages the whole model: not on this thread.
  pool_->Schedule([this, reactor] {
    handler_->CloseRoundIfDue();
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

void ParameterServerService::Track(TrackedCall* call) {
  call->Progress();
  absl::MutexLock lock(&mu_);
  calls_.insert(call);
}

void ParameterServerService::Untrack(TrackedCall* call) {
  absl::MutexLock lock(&mu_);
  calls_.erase(call);
}

void ParameterServerService::CancelIdleCalls() {
  const int64_t idle_ns = absl::ToInt64Nanoseconds(handler_->options().idle_timeout);
  const int64_t now = absl::GetCurrentTimeNanos();
  absl::MutexLock lock(&mu_);  // held while cancelling: a tracked call's context is alive
  for (TrackedCall* call : calls_) {
    if (call->server_busy || now - call->last_progress_ns < idle_ns) continue;
    call->last_progress_ns = now;  // one cancellation per idle period is enough
    call->idle_cancelled = true;
    handler_->NoteIdleCancelled();
    LogWarning(absl::StrFormat("event=idle_call_cancelled peer=%s idle_ms=%d",
                               LogSafe(call->context->peer()),
                               absl::ToInt64Milliseconds(handler_->options().idle_timeout)));
    call->context->TryCancel();
  }
}

std::string ParameterServerService::TakeBuffer() {
  absl::MutexLock lock(&mu_);
  if (free_buffers_.empty()) return {};
  std::string buffer = std::move(free_buffers_.back());
  free_buffers_.pop_back();
  pooled_bytes_ -= buffer.capacity();
  return buffer;
}

void ParameterServerService::ReturnBuffer(std::string buffer) {
  // Called while the push still holds its room in the budget. The pooled buffers and those in use
  // stay within the budget together (or one buffer, when a push alone is larger): the pushes the
  // budget lets in then find buffers here instead of faulting in fresh pages, which with 256
  // clients of a 4 MB model was nearly half the server's time. One that held less than half its
  // capacity (a 4-bit push in the buffer of an fp32 one) goes: its pages would stay resident for
  // pushes that never touch them.
  if (buffer.capacity() == 0 || buffer.size() < buffer.capacity() / 2) return;
  const ByteBudget& budget = handler_->push_buffers();
  const size_t keep = static_cast<size_t>(handler_->options().max_pooled_buffers);
  absl::MutexLock lock(&mu_);
  const bool fits = pooled_bytes_ + budget.held() <= budget.limit();
  if (free_buffers_.size() < keep && (free_buffers_.empty() || fits)) {
    pooled_bytes_ += buffer.capacity();
    free_buffers_.push_back(std::move(buffer));
  }
}

// Reads the chunks of one update into a PushAssembly. The update is handed to the handler on the
// pool only when the stream ended with a clean half-close and every payload byte arrived: gRPC
// reports a cancelled or expired call like a half-close (a failed read), so the reactor then
// sends its initial metadata, which only a stream the client has not reset can take. Any error
// finishes the call at once and nothing of the update is applied. Between the header and the
// payload the push may wait, reading nothing, until the handler's push_buffers budget has room
// for its payload: the client's writes then stall under HTTP/2 flow control.
class ParameterServerService::PushReactor : public grpc::ServerReadReactor<grpc::ByteBuffer>,
                                            public ByteBudget::Waiter {
 public:
  PushReactor(ParameterServerService* service, grpc::CallbackServerContext* context,
              grpc::ByteBuffer* ack)
      : service_(service),
        handler_(service->handler_),
        ack_(ack),
        assembly_([this](const v1::UpdateHeader& header) { return AcceptHeader(header); }) {
    tracked_.context = context;
    service_->Track(&tracked_);
    absl::StatusOr<Caller> caller = service_->Authenticate(*context);
    absl::Status admitted = caller.ok() ? handler_->CheckLoaded() : caller.status();
    if (!admitted.ok()) {
      FinishCall(ToGrpcStatus(admitted));
      return;
    }
    caller_ = *std::move(caller);
    Read();
  }

  void OnReadDone(bool ok) override {
    PS_HAPPENS_AFTER(this);
    if (!ok) return OnStreamEnd();
    tracked_.Progress();
    ++messages_;
    handler_->wire().bytes_received += message_.Length();
    v1::UpdateChunk chunk;
    if (!grpc::SerializationTraits<v1::UpdateChunk>::Deserialize(&message_, &chunk).ok()) {
      return Refuse(absl::InvalidArgumentError(absl::StrFormat(
          "push message %d is not a ps.v1.UpdateChunk; nothing of the update was applied",
          messages_)));
    }
    handler_->wire().payload_bytes_received += chunk.data().size();
    if (messages_ == 1) return WaitForBufferRoom(std::move(chunk));
    if (absl::Status s = assembly_.Add(chunk); !s.ok()) return Refuse(s);
    Read();
  }

  // Granted room for the payload: from WaitForBufferRoom, or from the thread of the push whose
  // end made the room.
  void OnGranted() override {
    PS_HAPPENS_AFTER(this);
    holds_buffer_room_ = true;
    tracked_.server_busy = false;
    tracked_.Progress();
    // A pooled buffer is taken only now: a push waiting for room must not sit on one.
    assembly_.SetBuffer(service_->TakeBuffer());
    absl::Status added = assembly_.Add(first_chunk_);
    first_chunk_.Clear();
    if (!added.ok()) return Refuse(added);
    Read();
  }

  void OnSendInitialMetadataDone(bool ok) override {
    PS_HAPPENS_AFTER(this);
    if (!ok || cancelled_) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED,
                              "push stream ended without a half-close (cancelled, or past its "
                              "deadline); nothing of the update was applied"));
      return;
    }
    service_->pool_->Schedule([this] { Submit(); });
  }

  void OnCancel() override {
    cancelled_ = true;
    if (handler_->push_buffers().Cancel(this)) FinishCancelledWhileWaiting();
  }
  void OnDone() override {
    PS_HAPPENS_AFTER(this);
    service_->Untrack(&tracked_);
    slot_.Release();
    member_call_.End();
    std::string buffer = assembly_.TakeBuffer();
    // An initial upload comes once, and its model-sized buffer would stay resident under
    // pushes that may be far smaller (4-bit ones): it is not kept.
    const bool upload =
        assembly_.has_header() && assembly_.header().kind() == v1::UPDATE_KIND_INITIAL_MODEL;
    if (!upload) service_->ReturnBuffer(std::move(buffer));
    if (holds_buffer_room_) handler_->push_buffers().Release(assembly_.header().payload_bytes());
    delete this;
  }

 private:
  // Runs on the header, before any payload is buffered.
  absl::StatusOr<PushRules> AcceptHeader(const v1::UpdateHeader& header) {
    absl::StatusOr<PushAdmission> admitted = handler_->AdmitPush(caller_, header);
    if (!admitted.ok()) return admitted.status();
    slot_ = std::move(admitted->slot);
    member_call_ = std::move(admitted->member_call);
    return std::move(admitted->rules);
  }

  // The header is admitted before anything is buffered; the first chunk (which carries it and
  // perhaps some payload) waits with the call if the budget has no room.
  void WaitForBufferRoom(v1::UpdateChunk first) {
    if (absl::Status s = assembly_.AdmitHeader(first); !s.ok()) return Refuse(s);
    first_chunk_ = std::move(first);
    tracked_.server_busy = true;  // the server holds it up, not the client
    PS_HAPPENS_BEFORE(this);
    if (handler_->push_buffers().Acquire(assembly_.header().payload_bytes(), this)) {
      return OnGranted();
    }
    // Queued. A cancellation that came before the queueing found nothing to take out.
    if (cancelled_ && handler_->push_buffers().Cancel(this)) FinishCancelledWhileWaiting();
  }

  void FinishCancelledWhileWaiting() {
    FinishCall(grpc::Status(grpc::StatusCode::CANCELLED,
                            "push cancelled while waiting for room to buffer it (limit "
                            "--push_buffer_mb); nothing of the update was applied"));
  }

  void OnStreamEnd() {
    if (tracked_.idle_cancelled) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED,
                              "push cancelled: nothing received for --idle_timeout"));
      return;
    }
    if (cancelled_) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "push cancelled by the client"));
      return;
    }
    if (absl::Status s = assembly_.Finish(); !s.ok()) return Refuse(s);
    tracked_.server_busy = true;
    PS_HAPPENS_BEFORE(this);
    StartSendInitialMetadata();  // the clean-end probe: see OnSendInitialMetadataDone
  }

  void Submit() {
    absl::StatusOr<SubmitResult> result =
        handler_->SubmitPush(assembly_.header(), assembly_.payload());
    if (!result.ok()) return FinishCall(ToGrpcStatus(result.status()));
    v1::PushAck ack;
    ack.set_result(result->duplicate ? v1::PushAck::RESULT_DUPLICATE
                   : result->folded  ? v1::PushAck::RESULT_FOLDED
                                     : v1::PushAck::RESULT_APPLIED);
    ack.set_version(result->version);
    const std::string bytes = ack.SerializeAsString();
    grpc::Slice slice(bytes);
    *ack_ = grpc::ByteBuffer(&slice, 1);
    handler_->wire().bytes_sent += bytes.size();
    FinishCall(grpc::Status::OK);
  }

  void Refuse(const absl::Status& status) {
    handler_->NoteRefusedPush(caller_, status);
    FinishCall(ToGrpcStatus(status));
  }

  void Read() {
    PS_HAPPENS_BEFORE(this);
    StartRead(&message_);
  }

  // Frees the push's place under max_concurrent_pushes before the client hears the outcome, so
  // that its next push never finds the place still taken, and renews the member's lease.
  void FinishCall(const grpc::Status& status) {
    slot_.Release();
    member_call_.End();
    PS_HAPPENS_BEFORE(this);
    Finish(status);
  }

  ParameterServerService* const service_;
  ServiceHandler* const handler_;
  grpc::ByteBuffer* const ack_;
  TrackedCall tracked_;
  Caller caller_;
  grpc::ByteBuffer message_;
  int messages_ = 0;
  PushAssembly assembly_;
  v1::UpdateChunk first_chunk_;                 // while waiting for room in the budget
  std::atomic<bool> holds_buffer_room_{false};  // its payload_bytes, given back at OnDone
  CallSlot slot_;           // one of the max_concurrent_pushes places, from the header on
  MemberCall member_call_;  // keeps the member's lease, from the header on
  std::atomic<bool> cancelled_{false};
};

grpc::ServerReadReactor<grpc::ByteBuffer>* ParameterServerService::Push(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* ack) {
  return new PushReactor(this, context, ack);
}

namespace {

void AppendVarint(uint64_t value, std::string* out) {
  for (; value >= 0x80; value >>= 7) out->push_back(static_cast<char>(value | 0x80));
  out->push_back(static_cast<char>(value));
}

// One ModelChunk on the wire without a copy of its data: `fields` (header, offset) serialized,
// then the data field's tag and length, then a slice that points into the plan's snapshot and
// holds a reference to the plan until the transport has sent it (the kernel's copy into the
// socket is then the only one; set_data and gRPC's serialization made two more, 1 MiB each).
grpc::ByteBuffer ChunkOnTheWire(const v1::ModelChunk& fields, const char* data, size_t size,
                                const std::shared_ptr<const PullPlan>& plan) {
  std::string prefix = fields.SerializeAsString();
  if (size == 0) {
    grpc::Slice only(prefix);
    return grpc::ByteBuffer(&only, 1);
  }
  AppendVarint((uint64_t{v1::ModelChunk::kDataFieldNumber} << 3) | 2, &prefix);  // bytes
  AppendVarint(size, &prefix);
  grpc::Slice slices[2] = {
      grpc::Slice(prefix),
      grpc::Slice(
          const_cast<char*>(data), size,
          [](void* keep) { delete static_cast<std::shared_ptr<const PullPlan>*>(keep); },
          new std::shared_ptr<const PullPlan>(plan))};
  return grpc::ByteBuffer(slices, 2);
}

}  // namespace

// Waits (through the handler) until the model is newer than the client's, then streams the
// handler's plan in chunks, one write in flight; or answers "unchanged" when the wait runs out.
// Served raw: each chunk's data goes out as a slice of the snapshot (ChunkOnTheWire).
class ParameterServerService::PullReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                                            public VersionWaitList::Waiter {
 public:
  // `request`: the parsed request, or why it did not parse.
  PullReactor(ParameterServerService* service, grpc::CallbackServerContext* context,
              const absl::StatusOr<v1::PullRequest>& request)
      : service_(service), handler_(service->handler_) {
    tracked_.context = context;
    service_->Track(&tracked_);
    absl::StatusOr<Caller> caller = service_->Authenticate(*context);
    absl::StatusOr<PullAdmission> admission =
        !caller.ok()    ? absl::StatusOr<PullAdmission>(caller.status())
        : !request.ok() ? absl::StatusOr<PullAdmission>(request.status())
                        : handler_->AdmitPull(*caller, *request);
    if (!admission.ok()) {
      FinishCall(ToGrpcStatus(admission.status()));
      return;
    }
    slot_ = std::move(admission->slot);
    member_call_ = std::move(admission->member_call);
    accept_.assign(request->accept_encodings().begin(), request->accept_encodings().end());
    have_version_ = admission->have_version;
    tracked_.server_busy = true;
    if (!handler_->WaitForNewer(have_version_, admission->deadline, this)) Send();
  }

  // Timed out or not, Send answers with whatever is current: a newer model or "unchanged".
  void OnReady(bool /*timed_out*/) override { Send(); }

  void OnWriteDone(bool ok) override {
    PS_HAPPENS_AFTER(this);
    if (!ok) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "pull stream broken"));
      return;
    }
    tracked_.Progress();
    NextChunk();
  }

  void OnCancel() override {
    PS_HAPPENS_AFTER(this);
    if (handler_->CancelWait(this)) {
      FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "pull cancelled while waiting"));
    }
  }
  void OnDone() override {
    PS_HAPPENS_AFTER(this);
    service_->Untrack(&tracked_);
    slot_.Release();
    member_call_.End();
    delete this;
  }

 private:
  // Frees the pull's place under max_pending_pulls before the client hears the outcome, and
  // renews the member's lease.
  void FinishCall(const grpc::Status& status) {
    slot_.Release();
    member_call_.End();
    PS_HAPPENS_BEFORE(this);
    Finish(status);
  }

  void Send() {
    plan_ = std::make_shared<const PullPlan>(handler_->PlanPull(have_version_, accept_, started_));
    tracked_.Progress();
    tracked_.server_busy = false;
    segment_ = 0;
    StartSegment();
  }

  void StartSegment() {
    const PullSegment& s = plan_->segments[segment_];
    ranges_ = ChunkRanges(s.size, handler_->options().chunk_bytes);
    next_range_ = 0;
    chunk_.Clear();
    *chunk_.mutable_header() = s.header;
    FillAndWrite();
  }

  // Writes chunk_ (whose header, if any, is set) with the next range of the current segment.
  void FillAndWrite() {
    const PullSegment& s = plan_->segments[segment_];
    const ByteRange r = ranges_[next_range_++];
    chunk_.set_offset(r.offset);
    out_ = ChunkOnTheWire(chunk_, s.data + r.offset, r.size, plan_);
    handler_->wire().bytes_sent += out_.Length();
    handler_->wire().payload_bytes_sent += r.size;
    PS_HAPPENS_BEFORE(this);
    StartWrite(&out_);
  }

  void NextChunk() {
    if (next_range_ < ranges_.size()) {
      chunk_.Clear();
      FillAndWrite();
    } else if (++segment_ < plan_->segments.size()) {
      StartSegment();
    } else {
      FinishCall(grpc::Status::OK);
    }
  }

  ParameterServerService* const service_;
  ServiceHandler* const handler_;
  const absl::Time started_ = absl::Now();
  TrackedCall tracked_;
  CallSlot slot_;           // one of the max_pending_pulls places
  MemberCall member_call_;  // keeps the member's lease while the pull waits or streams
  uint64_t have_version_ = 0;
  std::vector<int> accept_;               // v1::Encoding values
  std::shared_ptr<const PullPlan> plan_;  // also held by the slices the transport still has
  size_t segment_ = 0;
  std::vector<ByteRange> ranges_;
  size_t next_range_ = 0;
  v1::ModelChunk chunk_;  // the current chunk's fields but its data
  grpc::ByteBuffer out_;  // the chunk being written
};

grpc::ServerWriteReactor<grpc::ByteBuffer>* ParameterServerService::Pull(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw) {
  handler_->wire().bytes_received += raw->Length();
  grpc::ByteBuffer copy(*raw);  // Deserialize consumes its buffer; this shares the slices
  absl::StatusOr<v1::PullRequest> request = v1::PullRequest();
  if (!grpc::SerializationTraits<v1::PullRequest>::Deserialize(&copy, &*request).ok()) {
    request = absl::InvalidArgumentError("the request is not a ps.v1.PullRequest");
  }
  return new PullReactor(this, context, request);
}

}  // namespace ps
