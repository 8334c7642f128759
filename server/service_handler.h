// The parameter server's calls as plain C++: Join, Heartbeat, Leave, Status, push admission and
// submission, pull admission and planning. Each returns absl::Status(Or) and knows nothing of
// gRPC; service.cc only adapts them to the callback API and converts the status in one place.
//
// Readiness is checked once, on entry to every call. The server starts loading (every call is
// refused with UNAVAILABLE), then either has a model (Attach hands over the components) or waits
// for one (AwaitModel): then Join answers "initial model needed", Status answers, and a push of
// UPDATE_KIND_INITIAL_MODEL may upload the first values (docs/layouts.md); everything else is
// UNAVAILABLE until the upload is installed. The components are reachable only through that
// check (Ready()), so no call can touch a component that is not there yet.
#ifndef PS_SERVER_SERVICE_HANDLER_H_
#define PS_SERVER_SERVICE_HANDLER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "ps/v1/ps.pb.h"
#include "server/aggregator.h"
#include "server/byte_budget.h"
#include "server/membership.h"
#include "server/metrics.h"
#include "server/parameter_store.h"
#include "server/push_assembly.h"
#include "server/version_wait_list.h"

namespace ps {

struct ServiceOptions {
  v1::TrainingConfig training;
  uint32_t shard_index = 0;
  uint32_t shard_count = 1;
  absl::Duration max_pull_wait = absl::Seconds(30);
  uint64_t chunk_bytes = 0;
  int max_pooled_buffers = 3;  // push payload buffers kept for reuse (also within the budget)
  // Limits on what clients control; past them calls get RESOURCE_EXHAUSTED.
  int max_concurrent_pushes = 16;  // pushes past their header, each holding a shard-sized buffer
  int max_pending_pulls = 64;      // pulls waiting or streaming
  // Payload bytes the pushes being received may buffer at once; a push past it waits (its
  // client's stream stalls under HTTP/2 flow control) rather than being refused. One push is
  // always let in, whatever its size.
  uint64_t push_buffer_bytes = uint64_t{256} << 20;
  // A push that receives no chunk, or a pull whose client reads nothing, for this long is
  // cancelled and frees its place (a stalled or hostile client cannot hold the limits above).
  absl::Duration idle_timeout = absl::Seconds(60);
  // Adds what the service does not know (checkpoints) to Status answers.
  std::function<void(v1::StatusResponse*)> add_status;
  // The layout every worker must have (--layout, --model_size); empty = taken from the first
  // initial model uploaded.
  Layout required_layout;
  // Largest part of an uploaded initial model this shard takes, in bytes.
  uint64_t max_model_bytes = uint64_t{16} << 30;
  // Installs an uploaded initial model (this shard's part of `layout`, at `version`: 0 or 1 for a
  // fresh model, a worker's version when a server that lost its model gets it back) and returns
  // its version; ALREADY_EXISTS when a model was installed meanwhile. Called from the pool.
  std::function<absl::StatusOr<uint64_t>(const Layout& layout, std::vector<float> values,
                                         uint64_t version)>
      install_uploaded;
};

// Counters of serialized gRPC message bytes (HTTP/2 and TLS framing not included). Thread-safe.
struct WireCounters {
  std::atomic<uint64_t> bytes_received{0}, bytes_sent{0};
  std::atomic<uint64_t> payload_bytes_received{0}, payload_bytes_sent{0};
  std::atomic<uint64_t> raw_bytes_received{0}, raw_bytes_sent{0};
  void ToProto(v1::WireCounters* out) const;
};

// Who is calling: the identity the transport authenticated ("" with tokens off) and, for logs,
// the peer's address.
struct Caller {
  std::string identity;
  std::string peer;
};

// One of the places under a limit (max_concurrent_pushes, max_pending_pulls), held until Release
// or destruction. Move-only; Release is idempotent and may race with the destructor's.
class CallSlot {
 public:
  CallSlot() = default;
  explicit CallSlot(std::atomic<int>* count) : count_(count) {}
  CallSlot(CallSlot&& other) noexcept : count_(other.count_.exchange(nullptr)) {}
  CallSlot& operator=(CallSlot&& other) noexcept {
    Release();
    count_ = other.count_.exchange(nullptr);
    return *this;
  }
  ~CallSlot() { Release(); }
  void Release() {
    if (std::atomic<int>* count = count_.exchange(nullptr)) --*count;
  }
  bool held() const { return count_.load() != nullptr; }

 private:
  std::atomic<std::atomic<int>*> count_{nullptr};
};

// One of a member's calls in flight (Membership::BeginCall), ended by End or destruction: the
// member's lease does not run out while it lasts. Move-only; End is idempotent and may race with
// the destructor's.
class MemberCall {
 public:
  MemberCall() = default;
  MemberCall(Membership* membership, uint64_t id) : membership_(membership), id_(id) {}
  MemberCall(MemberCall&& other) noexcept
      : membership_(other.membership_.exchange(nullptr)), id_(other.id_) {}
  MemberCall& operator=(MemberCall&& other) noexcept {
    End();
    id_ = other.id_;
    membership_ = other.membership_.exchange(nullptr);
    return *this;
  }
  ~MemberCall() { End(); }
  void End() {
    if (Membership* m = membership_.exchange(nullptr)) m->EndCall(id_);
  }

 private:
  std::atomic<Membership*> membership_{nullptr};
  uint64_t id_ = 0;
};

// What a pull sends: one full model, the chain of deltas from the client's version
// (docs/algorithms.md section 9), or "unchanged"; each segment starts with a chunk that carries its
// header. The segments point into `snapshot`, which the plan keeps alive.
struct PullSegment {
  v1::ModelHeader header;
  const char* data = nullptr;
  uint64_t size = 0;
};
struct PullPlan {
  ModelSnapshot snapshot;
  std::vector<PullSegment> segments;
};

// An admitted push: its place under max_concurrent_pushes and the rules its stream must follow
// (the shard's, or for an initial upload those of the layout it carries).
struct PushAdmission {
  CallSlot slot;
  PushRules rules;
  MemberCall member_call;  // none for an initial upload
};

// An admitted pull: its place under max_pending_pulls, the version to compare against (0 when the
// client claimed one from the future), and when to stop waiting.
struct PullAdmission {
  CallSlot slot;
  MemberCall member_call;  // none for a pull without a worker id
  uint64_t have_version = 0;
  absl::Time deadline;
};

// Thread-safe. Borrows the components given to Attach; they must outlive every call.
class ServiceHandler {
 public:
  explicit ServiceHandler(const ServiceOptions& options);

  // Hands over the components of the model `layout` describes; calls are served from then on.
  // Call once.
  void Attach(const Layout& layout, ParameterStore* store, Membership* membership,
              Aggregator* aggregator, VersionWaitList* wait_list);
  // Loading is over but there is no model: initial uploads are taken from now on.
  void AwaitModel();
  // OK once loading is over, else UNAVAILABLE: for a push stream to refuse before its first
  // message (the header then says whether it is an initial upload).
  absl::Status CheckLoaded() const;

  // INVALID_ARGUMENT for a name over 256 bytes, a bad rank or a malformed layout;
  // FAILED_PRECONDITION for a layout other than the server's (naming the first tensor that
  // differs); ALREADY_EXISTS, RESOURCE_EXHAUSTED as Membership::Join. A refused Join changes
  // nothing (a live member with the same identity is replaced only when the Join succeeds).
  // Without a model: initial_model_needed, and no membership.
  absl::StatusOr<v1::JoinResponse> Join(const Caller& caller, const v1::JoinRequest& request);
  // Renews the lease. INVALID_ARGUMENT for an evaluation report that is not finite, has an
  // accuracy outside [0, 1] or version 0; a version past this shard's is kept as this shard's.
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const Caller& caller,
                                                  const v1::HeartbeatRequest& request);
  // Removes the member. The round it was waited for may now be complete: call CloseRoundIfDue
  // next (off the transport's thread: closing averages the whole model).
  absl::Status Leave(const Caller& caller, const v1::LeaveRequest& request);
  void CloseRoundIfDue();
  absl::StatusOr<v1::StatusResponse> Status(const Caller& caller);
  // Status for in-process readers (metrics, tests); the version is 0 while loading.
  v1::StatusResponse BuildStatus() const;

  // A push's header: is the caller this member, and is there a place for it? NOT_FOUND,
  // PERMISSION_DENIED, RESOURCE_EXHAUSTED. An initial upload: ALREADY_EXISTS once there is a
  // model, UNAVAILABLE while another upload is in progress, INVALID_ARGUMENT or
  // FAILED_PRECONDITION for its layout, RESOURCE_EXHAUSTED past max_model_bytes.
  absl::StatusOr<PushAdmission> AdmitPush(const Caller& caller, const v1::UpdateHeader& header);
  // Hands a complete, cleanly ended push to the aggregator (see Aggregator::Submit for the codes),
  // or an initial upload to install_uploaded.
  absl::StatusOr<SubmitResult> SubmitPush(const v1::UpdateHeader& header,
                                          absl::string_view payload);
  // A push refused before it reached the aggregator (bad stream, bad header), counted and logged.
  void NoteRefusedPush(const Caller& caller, const absl::Status& status);
  // A call whose credentials the transport refused, counted and logged.
  void NoteAuthRefused(absl::string_view peer, const absl::Status& status);
  // A call cancelled for making no progress within idle_timeout, counted.
  void NoteIdleCancelled() { ++cancelled_idle_; }

  // INVALID_ARGUMENT unless FP32 is accepted; RESOURCE_EXHAUSTED past max_pending_pulls;
  // NOT_FOUND / PERMISSION_DENIED for a worker id that is not the caller's member.
  absl::StatusOr<PullAdmission> AdmitPull(const Caller& caller, const v1::PullRequest& request);
  // Registers `waiter` until a version newer than `have_version` or `deadline`; false when there
  // is one already (plan the pull now). REQUIRES: an admitted pull.
  bool WaitForNewer(uint64_t have_version, absl::Time deadline, VersionWaitList::Waiter* waiter);
  bool CancelWait(VersionWaitList::Waiter* waiter);
  // What to send to a client holding `have_version` that accepts `accept` (v1::Encoding values).
  // REQUIRES: an admitted pull.
  PullPlan PlanPull(uint64_t have_version, const std::vector<int>& accept, absl::Time started);

  const ServiceOptions& options() const { return options_; }
  WireCounters& wire() { return wire_; }
  ByteBudget& push_buffers() { return push_buffers_; }
  // How long pulls waited for a newer version before being answered, in seconds: the time
  // workers spend at the barrier of a sync round.
  Histogram::Snapshot pull_wait() const { return pull_wait_.Get(); }

 private:
  struct Components {
    Layout layout;
    KeyRange range;  // this shard's part of the model
    PushRules rules;
    ParameterStore* store = nullptr;
    Membership* membership = nullptr;
    Aggregator* aggregator = nullptr;
    VersionWaitList* wait_list = nullptr;
  };
  enum class State { kLoading, kAwaitingModel, kReady };
  // The one readiness check: the components, or UNAVAILABLE while loading or without a model.
  // For a call acting as a member (worker_id != 0) a server without a model answers NOT_FOUND:
  // it restarted and lost everything, so the worker joins again and gives it its model back.
  absl::StatusOr<const Components*> Ready(uint64_t worker_id = 0) const;
  absl::StatusOr<v1::JoinResponse> JoinWithoutModel(const v1::JoinRequest& request,
                                                    const Layout* theirs);
  absl::StatusOr<PushAdmission> AdmitInitialUpload(const v1::UpdateHeader& header);
  absl::StatusOr<SubmitResult> SubmitInitialUpload(const v1::UpdateHeader& header,
                                                   absl::string_view payload);
  // Identity check of a call acting as worker `id`, counting refusals.
  absl::Status CheckIdentity(const Components& c, uint64_t id, const Caller& caller);
  absl::Status CheckEval(const Components& c, const v1::EvalReport& eval) const;
  PushRules RulesFor(const Layout& layout, std::vector<int> allowed) const;

  const ServiceOptions options_;
  // Set once by Attach, before state_ becomes kReady (release); read only after (acquire).
  std::atomic<State> state_{State::kLoading};
  Components components_;
  std::atomic<int> active_uploads_{0};  // initial uploads: one at a time

  WireCounters wire_;
  std::atomic<uint64_t> refused_at_stream_{0};  // pushes refused before reaching the aggregator
  std::atomic<uint64_t> refused_limit_{0};
  std::atomic<uint64_t> refused_auth_{0};
  std::atomic<uint64_t> cancelled_idle_{0};
  std::atomic<int> active_pushes_{0};
  std::atomic<int> active_pulls_{0};
  ByteBudget push_buffers_;
  Histogram pull_wait_{{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  mutable absl::Mutex mu_;
  v1::EvalReport last_eval_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_SERVICE_HANDLER_H_
