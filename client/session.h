// Session: the client library's centre. One training process's part in a run: it joins every
// server shard with the model's layout, holds the global model, and for each round compresses
// the process's update as the server asks, pushes it, pulls the next global model, and recovers
// from what a real run throws at it (stale refusals, servers that restarted, expired leases).
// Nothing outside the client library speaks the protocol; a training loop calls a Session.
//
// Typical Local SGD / DiLoCo loop (see examples/ and docs/client.md):
//
//   auto session = ps::Session::Connect(options);            // no network traffic yet
//   auto joined = (*session)->Join({layout, initial_values});
//   std::vector<float> params((*session)->model().begin(), (*session)->model().end());
//   for (...) {
//     ... H local steps on params ...
//     auto round = (*session)->Sync(absl::MakeSpan(params), {samples, loss, lr});
//   }
//   (*session)->Leave();
//
// Thread safety: a Session is driven by one thread (the training loop); counters() may be read
// from any thread. Heartbeats run on a thread of the session's own.
//
// Error codes, for every call that returns a status (the server's message is kept):
//   INVALID_ARGUMENT     the caller's input: a span of the wrong length, a bad layout, an override
//                        the server does not allow.
//   FAILED_PRECONDITION  the run cannot take this process: another layout (the message names the
//                        first tensor that differs), shards that disagree, a full run.
//   UNAVAILABLE          no server answered within the retry budget.
//   DEADLINE_EXCEEDED    a server answered too slowly, past the retries of an idempotent call.
//   UNAUTHENTICATED / PERMISSION_DENIED   the token or certificate was refused.
// A stale refusal (the update was too old for the server) is not an error: Sync and Push count
// it in their RoundResult and go on from the current model, as does a shard that forgot this
// process (it is joined again, with the same rank).
#ifndef PS_CLIENT_SESSION_H_
#define PS_CLIENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/compression.h"
#include "client/ps_client.h"
#include "common/layout.h"
#include "ps/v1/ps.pb.h"

namespace ps {

struct SessionOptions {
  // servers (one address per shard, in shard order), name, rank, timeouts, TLS and token.
  PsClientOptions connection;
  // What this process chooses within the encodings the server allows ({} = the server's).
  CompressionOverrides compression;
  // How long one pull waits for a round to close before it says so and waits again.
  absl::Duration pull_wait = absl::Seconds(10);
};

// What Join learned.
struct JoinedRun {
  uint64_t worker_id = 0;  // shard 0's id for this process
  uint32_t rank = 0;       // 0..K-1, the same on every shard
  // The run's settings with this process's compression overrides applied: mode, K, H, update
  // kind, encodings, the step-size schedule the server suggests.
  v1::TrainingConfig config;
  Layout layout;
  uint64_t version = 0;  // of the model now in model() (the oldest over shards)
};

// What goes with an update (the server's summary, and SlowMo's division by the inner step size).
struct UpdateInfo {
  uint64_t sample_count = 1;   // examples the update was computed from
  double train_loss = 0.0;     // mean training loss over those examples
  double learning_rate = 0.0;  // inner step size used; 0 = not told
  // This update's round and the run's length, for DQ-SGD's bit schedule and QSGD's seeds;
  // total_rounds = 0: not known (the session counts its updates, and DQ-SGD has no schedule).
  uint64_t round = 0;
  uint64_t total_rounds = 0;
};

// What one Sync or Push did.
struct RoundResult {
  uint64_t version = 0;         // of the model now in model(): the oldest over shards
  uint32_t stale_refusals = 0;  // shards that refused the update as too old (it was dropped)
  uint32_t repushes = 0;        // shards it was pushed to again as one round late (sharded sync)
  bool rejoined = false;  // a shard had forgotten this process and was joined again; in sync mode
                          // the run may have gone back (a server resumed from a checkpoint)
  double bits = 32.0;     // bits per coordinate of the update as sent (mean over shards)
};

// Totals since Connect.
struct SessionCounters {
  ClientWireStats wire;
  uint64_t updates = 0;  // Sync and Push calls that sent an update
  uint64_t stale_refusals = 0;
  uint64_t stale_repushes = 0;
  uint64_t rejoins = 0;
  double mean_update_bits = 32.0;
};

class Session {
 public:
  // A session over gRPC to options.connection.servers. Sends nothing yet. INVALID_ARGUMENT for
  // bad options (no server, unreadable TLS files).
  static absl::StatusOr<std::unique_ptr<Session>> Connect(const SessionOptions& options);
  virtual ~Session() = default;

  // The run's settings before joining (shard 0's Status, model_size of the whole model): a
  // training program may size or seed its model from them.
  virtual absl::StatusOr<v1::StatusResponse> ServerStatus() = 0;

  // Joins every shard with `initial.layout`. A server without a model takes `initial.values` as
  // version 1 (every replica then starts from the first process's model); one that has a model
  // refuses another layout. On return model() holds the run's current global model, and
  // heartbeats keep this process's lease. `initial.values` may be empty only if the server has
  // a model already.
  virtual absl::StatusOr<JoinedRun> Join(const ModelValues& initial) = 0;

  // The global model as last pulled (layout order, all shards), valid until the next call.
  virtual absl::Span<const float> model() const = 0;
  virtual uint64_t version() const = 0;

  // One whole Local SGD synchronisation: `params` holds this process's parameters after its
  // local steps from model(); the delta params - model() is compressed, pushed, and the next
  // global model is pulled and written into `params` (in sync mode: the model after the round
  // this update joined closes). INVALID_ARGUMENT if params.size() is not the model's size.
  absl::StatusOr<RoundResult> Sync(absl::Span<float> params, const UpdateInfo& info);

  // Pushes `update`, of the run's update kind (a model delta, or a gradient), then pulls the
  // next global model into model(). Sync is this with update = params - model().
  virtual absl::StatusOr<RoundResult> Push(absl::Span<const float> update,
                                           const UpdateInfo& info) = 0;

  // Pulls the newest model without pushing, waiting up to `wait` for one newer than version().
  virtual absl::StatusOr<uint64_t> Refresh(absl::Duration wait) = 0;

  // Sends a test-set evaluation to every shard (it shows in the servers' Status and summary).
  virtual absl::Status Report(const v1::EvalReport& eval) = 0;

  // Stops the heartbeats and leaves every shard (a shard that had already forgotten this
  // process is not an error). The session is done afterwards.
  virtual absl::Status Leave() = 0;

  virtual SessionCounters counters() const = 0;

 private:
  std::vector<float> delta_;  // Sync's params - model(), kept to save an allocation per round
};

}  // namespace ps

#endif  // PS_CLIENT_SESSION_H_
