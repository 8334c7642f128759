// The gRPC adapter: ps.v1.ParameterServer on the callback API. It checks what clients send, moves
// bytes, and hands the logic to Membership, Aggregator and ParameterStore. Reactions never block:
// decoding and applying run on the server's ThreadPool.
#ifndef PS_SERVER_SERVICE_H_
#define PS_SERVER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/thread_pool.h"
#include "ps/v1/ps.grpc.pb.h"
#include "server/aggregator.h"
#include "server/auth.h"
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

// Thread-safe. Borrows every component; they must outlive the grpc::Server that serves this.
class ParameterServerService final : public v1::ParameterServer::CallbackService {
 public:
  // Until Attach, every call is refused with UNAVAILABLE ("loading"): the server listens (and
  // answers health checks) while it loads its model.
  ParameterServerService(const ServiceOptions& options, ThreadPool* pool,
                         const Authenticator* auth);
  // Hands over the loaded components and starts serving. Call once.
  void Attach(ParameterStore* store, Membership* membership, Aggregator* aggregator,
              VersionWaitList* wait_list);

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;
  grpc::ServerReadReactor<v1::UpdateChunk>* Push(grpc::CallbackServerContext* context,
                                                 v1::PushAck* ack) override;
  grpc::ServerWriteReactor<v1::ModelChunk>* Pull(grpc::CallbackServerContext* context,
                                                 const v1::PullRequest* request) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const v1::StatusRequest* request,
                                   v1::StatusResponse* response) override;

  v1::StatusResponse BuildStatus() const;
  // How long pulls waited for a newer version before being answered, in seconds: the time
  // workers spend at the barrier of a sync round.
  Histogram::Snapshot pull_wait() const { return pull_wait_.Get(); }
  const ServiceOptions& options() const { return options_; }

 private:
  class PushReactor;
  class PullReactor;

  // Every call starts here: UNAVAILABLE while loading, else the caller's identity ("" with tokens
  // off) or the refusal, counted.
  absl::StatusOr<std::string> Admit(const grpc::CallbackServerContext& context);
  // Identity check of a call acting as worker `id`, counting refusals.
  absl::Status CheckIdentity(uint64_t id, const std::string& identity);
  uint64_t shard_size() const { return options_.shard_end - options_.shard_begin; }
  // Payload buffers reused across pushes: a fresh model-sized allocation per push costs more in
  // page faults than the copy into it.
  std::string TakeBuffer();
  void ReturnBuffer(std::string buffer);

  const ServiceOptions options_;
  // Set once by Attach, before ready_ (release); read only after ready_ (acquire).
  std::atomic<bool> ready_{false};
  ParameterStore* store_ = nullptr;
  Membership* membership_ = nullptr;
  Aggregator* aggregator_ = nullptr;
  VersionWaitList* wait_list_ = nullptr;
  ThreadPool* const pool_;
  const Authenticator* const auth_;
  const PushRules push_rules_;

  WireCounters wire_;
  std::atomic<uint64_t> refused_at_stream_{0};  // pushes refused before reaching the aggregator
  std::atomic<uint64_t> refused_limit_{0};
  std::atomic<uint64_t> refused_auth_{0};
  std::atomic<int> active_pushes_{0};
  std::atomic<int> active_pulls_{0};
  Histogram pull_wait_{{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  mutable absl::Mutex mu_;
  v1::EvalReport last_eval_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> free_buffers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_SERVICE_H_
