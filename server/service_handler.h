// The parameter server's calls as plain C++: Join, Heartbeat, Leave, Status, push admission and
// submission, pull admission and planning. Each returns absl::Status(Or) and knows nothing of
// gRPC; service.cc only adapts them to the callback API and converts the status in one place.
//
// Readiness is checked once, on entry to every call: until Attach hands over the loaded
// components, every call is refused with UNAVAILABLE ("loading"). The components are reachable
// only through that check (Ready()), so no call can touch a component that is not there yet.
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
#include "common/metrics.h"
#include "ps/v1/ps.pb.h"
#include "server/aggregator.h"
#include "server/membership.h"
#include "server/parameter_store.h"
#include "server/push_assembly.h"
#include "server/version_wait_list.h"

namespace ps {

struct ServiceOptions {
  v1::TrainingConfig training;
  uint64_t model_size = 0;
  uint64_t shard_begin = 0;
  uint64_t shard_end = 0;
  uint32_t shard_index = 0;
  uint32_t shard_count = 1;
  absl::Duration max_pull_wait = absl::Seconds(30);
  uint64_t chunk_bytes = 0;
  int max_pooled_buffers = 3;  // push payload buffers kept for reuse
  // Limits on what clients control; past them calls get RESOURCE_EXHAUSTED.
  int max_concurrent_pushes = 16;  // pushes past their header, each holding a shard-sized buffer
  int max_pending_pulls = 64;      // pulls waiting or streaming
  // A push that receives no chunk, or a pull whose client reads nothing, for this long is
  // cancelled and frees its place (a stalled or hostile client cannot hold the limits above).
  absl::Duration idle_timeout = absl::Seconds(60);
  // Adds what the service does not know (checkpoints) to Status answers.
  std::function<void(v1::StatusResponse*)> add_status;
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

// What a pull sends: one full model, the chain of deltas from the client's version (ALGORITHMS.md
// section 9), or "unchanged"; each segment starts with a chunk that carries its header. The
// segments point into `snapshot`, which the plan keeps alive.
struct PullSegment {
  v1::ModelHeader header;
  const char* data = nullptr;
  uint64_t size = 0;
};
struct PullPlan {
  ModelSnapshot snapshot;
  std::vector<PullSegment> segments;
};

// An admitted pull: its place under max_pending_pulls, the version to compare against (0 when the
// client claimed one from the future), and when to stop waiting.
struct PullAdmission {
  CallSlot slot;
  uint64_t have_version = 0;
  absl::Time deadline;
};

// Thread-safe. Borrows the components given to Attach; they must outlive every call.
class ServiceHandler {
 public:
  explicit ServiceHandler(const ServiceOptions& options);

  // Hands over the loaded components; calls are served from then on. Call once.
  void Attach(ParameterStore* store, Membership* membership, Aggregator* aggregator,
              VersionWaitList* wait_list);
  // OK once attached, else UNAVAILABLE ("loading"): for a stream to refuse before its first
  // message.
  absl::Status CheckReady() const { return Ready().status(); }

  // INVALID_ARGUMENT for a name over 256 bytes or a bad rank; ALREADY_EXISTS, RESOURCE_EXHAUSTED
  // as Membership::Join. A refused Join changes nothing (a live member with the same identity
  // is replaced only when the Join succeeds).
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

  // A push header that passed the shard's rules: is the caller this member, and is there a place
  // for it? NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED.
  absl::StatusOr<CallSlot> AdmitPush(const Caller& caller, const v1::UpdateHeader& header);
  // Hands a complete, cleanly ended push to the aggregator (see Aggregator::Submit for the codes).
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
  const PushRules& push_rules() const { return push_rules_; }
  WireCounters& wire() { return wire_; }
  // How long pulls waited for a newer version before being answered, in seconds: the time
  // workers spend at the barrier of a sync round.
  Histogram::Snapshot pull_wait() const { return pull_wait_.Get(); }

 private:
  struct Components {
    ParameterStore* store = nullptr;
    Membership* membership = nullptr;
    Aggregator* aggregator = nullptr;
    VersionWaitList* wait_list = nullptr;
  };
  // The one readiness check: the components, or UNAVAILABLE while the model loads.
  absl::StatusOr<const Components*> Ready() const;
  // Identity check of a call acting as worker `id`, counting refusals.
  absl::Status CheckIdentity(const Components& c, uint64_t id, const Caller& caller);
  absl::Status CheckEval(const Components& c, const v1::EvalReport& eval) const;
  uint64_t shard_size() const { return options_.shard_end - options_.shard_begin; }

  const ServiceOptions options_;
  const PushRules push_rules_;
  // Set once by Attach, before ready_ (release); read only after ready_ (acquire).
  std::atomic<bool> ready_{false};
  Components components_;

  WireCounters wire_;
  std::atomic<uint64_t> refused_at_stream_{0};  // pushes refused before reaching the aggregator
  std::atomic<uint64_t> refused_limit_{0};
  std::atomic<uint64_t> refused_auth_{0};
  std::atomic<uint64_t> cancelled_idle_{0};
  std::atomic<int> active_pushes_{0};
  std::atomic<int> active_pulls_{0};
  Histogram pull_wait_{{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  mutable absl::Mutex mu_;
  v1::EvalReport last_eval_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_SERVICE_HANDLER_H_
