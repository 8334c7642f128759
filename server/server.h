// ParameterServer: the whole server of one shard, wired together and listening. main() and the
// in-process integration tests both build it from ServerOptions.
#ifndef PS_SERVER_SERVER_H_
#define PS_SERVER_SERVER_H_

#include <grpcpp/server.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "common/model_file.h"
#include "common/thread_pool.h"
#include "ps/v1/ps.pb.h"
#include "server/aggregator.h"
#include "server/auth.h"
#include "server/checkpoint.h"
#include "server/membership.h"
#include "server/metrics.h"
#include "server/parameter_store.h"
#include "server/service.h"
#include "server/service_handler.h"
#include "server/version_wait_list.h"

namespace ps {

struct ServerOptions {
  std::string listen_address = "127.0.0.1:0";
  // A second, plaintext port for grpc.health.v1 (and reflection) only, for probes that cannot
  // speak TLS (Kubernetes' gRPC probes); with TLS, parameter-server calls on it are refused.
  // "" = none.
  std::string health_listen_address;
  // Handed to every worker at Join (the built-in worker's model settings included; the server
  // itself knows a model only by its layout).
  v1::TrainingConfig training;
  // The model (docs/layouts.md). Its layout: `layout` (--layout, --model_size), or that of
  // `initial_model_file` (.npz), or of the first initial model a worker uploads. Its values:
  // the newest checkpoint, else `initial_model` (in process) or `initial_model_file` (.npz,
  // .npy or raw float32), else the first upload. Empty = not given.
  Layout layout;
  std::string initial_model_file;
  std::optional<ModelValues> initial_model;
  // Largest part of an uploaded initial model this shard takes.
  uint64_t max_model_bytes = uint64_t{16} << 30;
  uint32_t shard_index = 0;
  uint32_t shard_count = 1;
  double staleness_exponent = 0.5;
  double max_staleness = 4.0;
  double max_update_ratio = 0.0;  // see AggregatorOptions; 0 = off
  float server_learning_rate = 0.1f;
  // Delta mode: what a round's average (or an async update) does to the model
  // (docs/algorithms.md section 8). Delayed Nesterov's period 0 = num_workers.
  OuterOptimizerOptions outer;
  absl::Duration lease = absl::Seconds(30);
  absl::Duration max_pull_wait = absl::Seconds(30);
  uint64_t chunk_bytes = 1 << 20;
  int threads = 2;
  // Limits on what clients control (RESOURCE_EXHAUSTED past them); 0 = derived from num_workers.
  int max_concurrent_pushes = 0;
  int max_pending_pulls = 0;
  // Payload bytes the pushes being received may buffer at once; past it a push waits for room
  // (its client's stream stalls) instead of being refused. One push is always let in.
  uint64_t push_buffer_bytes = uint64_t{256} << 20;
  // A push that receives nothing, or a pull whose client reads nothing, for this long is
  // cancelled (CANCELLED) and frees its place under the limits above.
  absl::Duration idle_timeout = absl::Seconds(60);
  // gRPC transport bounds: memory (0 = 256 MiB + twice the shard's bytes) and threads of its
  // resource quota, and concurrent streams per client connection.
  uint64_t transport_memory_bytes = 0;
  // HTTP/2 receive window of each stream (fixed: no BDP probing). One push moves at most this
  // per round trip (4 MiB in 50 ms: 670 Mbit/s), and a push waiting for room holds at most this.
  uint64_t stream_window_bytes = uint64_t{4} << 20;
  int transport_max_threads = 256;
  int max_streams_per_connection = 32;
  // Durability: checkpoints in checkpoint_dir every N versions and/or every T, and at shutdown;
  // the newest valid one is resumed from at start. "" = no checkpoints.
  std::string checkpoint_dir;
  uint64_t checkpoint_every_versions = 0;                  // 0 = not by versions
  absl::Duration checkpoint_every = absl::ZeroDuration();  // 0 = not by time
  int checkpoint_keep = 2;
  ServerSecurityOptions security;
  // Prometheus metrics over plain HTTP on their own port (GET /metrics); "" = off.
  std::string metrics_listen;
  // Called once (from an internal thread) when K workers had joined and all have left again.
  std::function<void()> on_training_done;
  // Called with the bound port once the server listens, before it loads the model (health checks
  // answer NOT_SERVING until the model is loaded).
  std::function<void(int port)> on_loading;
  // For tests: called on the checkpoint thread with the version about to be written, before the
  // write (a test holds it there to show that nothing else waits for a write).
  std::function<void(uint64_t version)> before_checkpoint_write_for_test;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// Thread-safe.
class ParameterServer {
 public:
  // Starts listening, then loads the model (or waits for a worker to upload one). INVALID_ARGUMENT
  // for bad options, NOT_FOUND or INVALID_ARGUMENT for an unreadable initial model or one that
  // does not match the layout, FAILED_PRECONDITION for a checkpoint of other settings,
  // UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ParameterServer>> Create(const ServerOptions& options);
  ~ParameterServer();

  // The port actually bound (useful with port 0).
  int port() const { return port_; }
  // The health-check port actually bound; 0 without health_listen_address.
  int health_port() const { return health_port_; }
  // The metrics endpoint's port; 0 when metrics are off.
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // This server's state as Prometheus metric families, and as the text exposition.
  std::vector<prometheus::MetricFamily> CollectMetrics() const;
  std::string RenderMetrics() const;
  std::string address() const;
  // Stops accepting calls, answers waiting pulls, finishes in-flight calls within `grace`, then
  // cancels the rest; closes the open sync round if it has the minimum quorum (else drops it) and
  // writes a last checkpoint. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  // Writes a checkpoint of the current version now (if there is a newer one than the last).
  absl::Status Checkpoint();

  v1::StatusResponse GetStatus() const { return handler_->BuildStatus(); }
  // Whether there is a model yet (loaded, or uploaded by a worker).
  bool has_model() const { return installed() != nullptr; }
  // What workers hold (the broadcast model), and the model the aggregator updates; the same unless
  // the downlink is compressed. Empty (version 0, no values) without a model.
  ModelSnapshot Model() const;
  std::shared_ptr<const std::vector<float>> TrueModel() const;
  const ServerOptions& options() const { return options_; }

 private:
  explicit ParameterServer(const ServerOptions& options) : options_(options) {}
  void Housekeeping();
  // A checkpoint is due by versions or by time.
  bool CheckpointDue() const;
  // grpc.health.v1 status of "" and of ps.v1.ParameterServer.
  void SetServing(bool serving);
  // The newest valid checkpoint in options_.checkpoint_dir, if there is one, checked against the
  // options (settings, shard, layout).
  absl::StatusOr<std::optional<LoadedCheckpoint>> LoadCheckpoint() const;
  // The model from a checkpoint, from options_.initial_model(_file), or none (await an upload).
  absl::Status LoadModel();
  // What serves one shard of one model: built once there is a model, then never changed.
  struct Shard {
    Layout layout;
    KeyRange range;
    std::unique_ptr<VersionWaitList> wait_list;
    std::unique_ptr<ParameterStore> store;
    std::unique_ptr<Membership> membership;
    std::unique_ptr<Aggregator> aggregator;
  };
  // Builds the shard for `layout` from its values (this shard's range) at `version` and serves
  // it. Once.
  void Install(const Layout& layout, std::vector<float> values, std::vector<float> broadcast,
               uint64_t version, LoadedCheckpoint* resumed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(install_mu_);
  // An initial model a worker uploaded: ALREADY_EXISTS if there is one already.
  absl::StatusOr<uint64_t> InstallUploaded(const Layout& layout, std::vector<float> values,
                                           uint64_t version);
  // The shard once installed (acquire), else nullptr.
  const Shard* installed() const { return installed_.load(std::memory_order_acquire); }
  void AddDurabilityStatus(v1::StatusResponse* status) const;

  const ServerOptions options_;
  absl::Mutex install_mu_;
  std::unique_ptr<Shard> shard_ ABSL_GUARDED_BY(install_mu_);
  std::atomic<const Shard*> installed_{nullptr};
  // An uploaded model is written to a checkpoint at once: a restart must not lose its layout.
  std::atomic<bool> checkpoint_now_{false};
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<ServiceHandler> handler_;
  std::unique_ptr<ParameterServerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsEndpoint> metrics_;
  const absl::Time started_ = absl::Now();
  int port_ = 0;
  int health_port_ = 0;

  // Checkpoints: written by their own thread and at shutdown, one at a time (writer_mu_,
  // held through the write); what the newest one is sits under durability_mu_, held only for a
  // moment, so that Status and /metrics never wait for a write.
  absl::Mutex checkpoint_writer_mu_ ABSL_ACQUIRED_BEFORE(durability_mu_);
  mutable absl::Mutex durability_mu_;
  uint64_t checkpoint_version_ ABSL_GUARDED_BY(durability_mu_) = 0;
  absl::Time checkpoint_time_ ABSL_GUARDED_BY(durability_mu_) = absl::InfinitePast();
  uint64_t resumed_from_version_ ABSL_GUARDED_BY(durability_mu_) = 0;
  // Starts on this checkpoint directory, this one included.
  uint64_t epoch_ ABSL_GUARDED_BY(durability_mu_) = 1;

  // The checkpoint thread writes when housekeeping finds one due, when a publish makes one due by
  // versions (so --checkpoint_every_versions does not wait for the timer), and for an uploaded
  // model; leases and round deadlines never wait for a write.
  void WakeCheckpointer();
  void CheckpointWhenAsked();
  absl::Mutex checkpointer_mu_;
  bool checkpointer_woken_ ABSL_GUARDED_BY(checkpointer_mu_) = false;
  bool checkpointer_stopped_ ABSL_GUARDED_BY(checkpointer_mu_) = false;
  std::thread checkpointer_;

  // Housekeeping (leases, round deadlines, idle calls) runs on a timer.
  absl::Mutex housekeeping_mu_;
  bool housekeeping_woken_ ABSL_GUARDED_BY(housekeeping_mu_) = false;
  bool housekeeping_stopped_ ABSL_GUARDED_BY(housekeeping_mu_) = false;
  bool training_done_ = false;  // housekeeping thread only
  std::thread housekeeping_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

// Writes the model of the newest valid checkpoint in each of `checkpoint_dirs` (one per shard, in
// shard order) as an .npz with one array per tensor (ps-server --export_model). Returns the
// version exported.
absl::StatusOr<uint64_t> ExportCheckpoints(const std::vector<std::string>& checkpoint_dirs,
                                           const std::string& path);

}  // namespace ps

#endif  // PS_SERVER_SERVER_H_
