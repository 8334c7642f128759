// The gRPC adapter: ps.v1.ParameterServer on the callback API. It authenticates the caller,
// moves bytes and hands every decision to the ServiceHandler (no gRPC there); statuses are
// converted in one place (rpc/grpc_status.h). Reactions never block: decoding and applying run
// on the server's ThreadPool.
#ifndef PS_SERVER_SERVICE_H_
#define PS_SERVER_SERVICE_H_

#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/thread_pool.h"
#include "ps/v1/ps.grpc.pb.h"
#include "server/auth.h"
#include "server/service_handler.h"

namespace ps {

// Push is served raw (ByteBuffer) so that a message that does not parse is refused with
// INVALID_ARGUMENT; gRPC itself would report it like a normal end of the stream. Pull is served
// raw so that model chunks go out as slices of the published snapshot, uncopied.
using ParameterServerBase = v1::ParameterServer::WithRawCallbackMethod_Pull<
    v1::ParameterServer::WithRawCallbackMethod_Push<v1::ParameterServer::CallbackService>>;

// Thread-safe. Borrows the handler, pool and authenticator; they must outlive the grpc::Server
// that serves this.
class ParameterServerService final : public ParameterServerBase {
 public:
  ParameterServerService(ServiceHandler* handler, ThreadPool* pool, const Authenticator* auth);
  // REQUIRES: the grpc::Server that served this is shut down (every call is done). Takes mu_ once,
  // so that the last call's Untrack is ordered before the destruction for every observer
  // (gRPC's own ordering happens in its core, which ThreadSanitizer cannot see).
  ~ParameterServerService();

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context,
                                  const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* Push(grpc::CallbackServerContext* context,
                                                  grpc::ByteBuffer* ack) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Pull(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const v1::StatusRequest* request,
                                   v1::StatusResponse* response) override;

  // Cancels pushes that received nothing, and pulls whose client read nothing, for the handler's
  // idle_timeout; they free their places. Call periodically (the server's housekeeping does).
  void CancelIdleCalls();

 private:
  class PushReactor;
  class PullReactor;
  // A push or pull in progress, for CancelIdleCalls.
  struct TrackedCall {
    grpc::CallbackServerContext* context = nullptr;
    std::atomic<int64_t> last_progress_ns{0};
    // The server, not the client, holds the call up (a pull parked until a newer version, a
    // push being applied): not idle.
    std::atomic<bool> server_busy{false};
    std::atomic<bool> idle_cancelled{false};  // by CancelIdleCalls
    void Progress() { last_progress_ns = absl::GetCurrentTimeNanos(); }
  };
  void Track(TrackedCall* call);
  void Untrack(TrackedCall* call);

  // The caller, or the transport's refusal of its credentials (counted by the handler).
  absl::StatusOr<Caller> Authenticate(const grpc::CallbackServerContext& context);
  // Payload buffers reused across pushes: a fresh model-sized allocation per push costs more in
  // page faults than the copy into it.
  std::string TakeBuffer();
  void ReturnBuffer(std::string buffer);

  ServiceHandler* const handler_;
  ThreadPool* const pool_;
  const Authenticator* const auth_;
  absl::Mutex mu_;
  std::vector<std::string> free_buffers_ ABSL_GUARDED_BY(mu_);
  uint64_t pooled_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // their capacities
  std::set<TrackedCall*> calls_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_SERVICE_H_
