// PsClient: a worker's connection to one parameter server shard (ShardedClient holds one per
// shard). Every call has a deadline; UNAVAILABLE is retried with exponential backoff and jitter
// (pushes keep their sequence number, so a retried push is never applied twice).
#ifndef PS_CLIENT_PS_CLIENT_H_
#define PS_CLIENT_PS_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/backoff.h"
#include "common/chunking.h"
#include "common/layout.h"
#include "ps/v1/ps.grpc.pb.h"

namespace ps {

struct PsClientOptions {
  // The server's address (host:port); ShardedClient takes one per shard, in shard order.
  std::vector<std::string> servers;
  std::string worker_name;
  int requested_rank = -1;  // -1: the server picks a free rank
  absl::Duration rpc_timeout = absl::Seconds(30);
  absl::Duration retry_budget = absl::Seconds(60);  // stop retrying UNAVAILABLE after this long
  BackoffOptions backoff;
  // Security. tls_ca_file turns TLS on (the server's certificate must chain to it); a client
  // certificate and key are for mutual TLS; tls_server_name overrides the name checked against
  // the server's certificate. `token` goes in every call's metadata.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
  std::string token;
};

// Bytes of serialized gRPC messages (not HTTP/2 framing) and of tensor payloads. `raw` is what the
// payloads would take as fp32.
struct ClientWireStats {
  uint64_t bytes_sent = 0, bytes_received = 0;
  uint64_t payload_bytes_sent = 0, payload_bytes_received = 0;
  uint64_t raw_bytes_sent = 0, raw_bytes_received = 0;
  // Of bytes_sent, what went to uploading the initial model (whether this process's upload was
  // the one the server took or lost the race to another's): a comparison of update traffic
  // subtracts it.
  uint64_t upload_bytes_sent = 0;
};

struct PullResult {
  bool changed = false;  // false: nothing newer within the wait, `model` untouched
  uint64_t version = 0;
};

// Thread-safe: the trainer and the heartbeat thread share it.
class PsClient {
 public:
  static absl::StatusOr<std::unique_ptr<PsClient>> Create(const PsClientOptions& options);
  ~PsClient();

  // Becomes a member; later calls act as the returned worker id. `requested_rank` overrides the
  // options' (a worker re-joining asks for the rank it had). With `layout`, a server holding
  // another model refuses (FAILED_PRECONDITION naming the tensor). A server without a model
  // answers initial_model_needed and makes no member (see UploadInitialModel).
  absl::StatusOr<v1::JoinResponse> Join(std::optional<int> requested_rank = std::nullopt,
                                        const Layout* layout = nullptr);
  // Gives a server without a model its first values: `values` is this shard's range (from the
  // JoinResponse) of a model of `layout`, at `version` (0: a fresh model, version 1; else the
  // version of the model this worker holds, for a server that lost its own). OK once installed;
  // ALREADY_EXISTS if the server got one meanwhile (join again and take it). Retries
  // UNAVAILABLE (another upload in progress).
  absl::Status UploadInitialModel(const Layout& layout, absl::Span<const float> values,
                                  uint64_t version = 0);
  // `eval` may be null.
  absl::Status Heartbeat(const v1::EvalReport* eval);
  // Renews the lease every lease/3 from a background thread until Leave or destruction.
  void StartHeartbeats();
  absl::Status Leave();

  // Pushes one update covering the whole model, as FP32. FAILED_PRECONDITION means stale: pull
  // and go on.
  absl::StatusOr<v1::PushAck> Push(v1::UpdateKind kind, uint64_t base_version,
                                   uint64_t sample_count, absl::Span<const float> values,
                                   double train_loss);
  // The same for an update already encoded (e.g. by UpdateCompressor) from `num_elements` values.
  // `learning_rate` is the step size the update was made with (0 = not told).
  absl::StatusOr<v1::PushAck> PushEncoded(v1::UpdateKind kind, uint64_t base_version,
                                          uint64_t sample_count, const v1::EncodingParams& encoding,
                                          absl::string_view payload, uint64_t num_elements,
                                          double train_loss, double learning_rate = 0.0);
  // Waits up to `wait` for a model newer than `have_version` and brings `model` to it: a full
  // model, or the chain of quantized deltas from `have_version` (so `model` must hold exactly the
  // model of `have_version` as pulled before). model.size() must be the model size. On error
  // `model` is unchanged. Works before Join as an observer (worker id 0).
  absl::StatusOr<PullResult> Pull(uint64_t have_version, absl::Duration wait,
                                  absl::Span<float> model);
  // The server's Status.
  absl::StatusOr<v1::StatusResponse> Status();

  ClientWireStats wire() const;
  uint64_t worker_id() const { return worker_id_; }

 private:
  explicit PsClient(const PsClientOptions& options);
  // Sets the call's deadline and its token.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;
  // Runs `attempt` until it returns something other than UNAVAILABLE (or `also_retry`) or the
  // retry budget is spent. Idempotent calls (Heartbeat, Leave, Status, Pull, and Push, whose
  // retry the server answers DUPLICATE if the first try was applied) also retry
  // DEADLINE_EXCEEDED, so a worker rides out a network partition shorter than the budget.
  template <typename Attempt>
  grpc::Status WithRetries(absl::string_view what, Attempt attempt,
                           grpc::StatusCode also_retry = grpc::StatusCode::UNAVAILABLE);
  // One idempotent unary call with retries (DEADLINE_EXCEEDED too), its bytes counted, and its
  // error naming the call and the server.
  template <typename Request, typename Response>
  absl::Status CallIdempotent(absl::string_view what,
                              grpc::Status (v1::ParameterServer::Stub::*method)(
                                  grpc::ClientContext*, const Request&, Response*),
                              const Request& request, Response* response);
  void StopHeartbeats();
  absl::StatusOr<v1::PushAck> PushLocked(v1::UpdateKind kind, uint64_t base_version,
                                         uint64_t sample_count, const v1::EncodingParams& encoding,
                                         absl::string_view payload, uint64_t num_elements,
                                         double train_loss, double learning_rate = 0.0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(push_mu_);
  // Streams `header` and `payload` in chunks, with retries.
  grpc::Status SendPush(const v1::UpdateHeader& header, absl::string_view payload,
                        v1::PushAck* ack);

  const PsClientOptions options_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;
  std::atomic<uint64_t> worker_id_{0};
  std::atomic<uint64_t> next_sequence_{1};
  std::atomic<int64_t> lease_ms_{30000};
  uint64_t chunk_bytes_ = 1 << 20;

  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0};
  std::atomic<uint64_t> payload_sent_{0}, payload_received_{0};
  std::atomic<uint64_t> raw_sent_{0}, raw_received_{0};
  std::atomic<uint64_t> upload_sent_{0};

  // Buffers kept across calls: a fresh model-sized allocation per push or pull costs more in page
  // faults than the copy itself. Push and Pull each hold their mutex for the whole call.
  absl::Mutex push_mu_;
  std::string push_buffer_ ABSL_GUARDED_BY(push_mu_);
  absl::Mutex pull_mu_;
  PayloadAssembler pull_assembler_ ABSL_GUARDED_BY(pull_mu_);
  std::vector<float> pull_scratch_ ABSL_GUARDED_BY(pull_mu_);  // a delta chain is applied here

  std::unique_ptr<absl::Notification> stop_heartbeats_;
  std::thread heartbeat_thread_;
};

}  // namespace ps

#endif  // PS_CLIENT_PS_CLIENT_H_
