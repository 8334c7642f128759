// ShardedClient: a worker's connection to the whole model when it is split by key range over S
// ps-server shards (S = 1 is one server). It joins every shard with the same rank, splits every
// push and pull by the shards' ranges, and talks to all shards in parallel.
#ifndef PS_CLIENT_SHARDED_CLIENT_H_
#define PS_CLIENT_SHARDED_CLIENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/ps_client.h"
#include "common/layout.h"

namespace ps {

// Thread-safe as PsClient is; calls on different shards run in parallel.
class ShardedClient {
 public:
  // One PsClient per address in options.servers, in shard order (shard i at servers[i]).
  static absl::StatusOr<std::unique_ptr<ShardedClient>> Create(const PsClientOptions& options);

  size_t num_shards() const { return shards_.size(); }
  PsClient* shard(size_t i) { return shards_[i].get(); }
  // Each shard's key range (known after Join).
  const std::vector<KeyRange>& ranges() const { return ranges_; }

  // For an observer that does not join (ps-worker --evaluate_only): learns the ranges from each
  // shard's Status. Shard i of S holds [i*d/S, (i+1)*d/S), the servers' rule.
  absl::Status DiscoverRanges();
  // Joins shard 0, then every other shard with the rank shard 0 gave. FAILED_PRECONDITION if the
  // shards disagree (model size, shard count and order, settings) or their ranges do not tile the
  // model, or if a shard holds a model of another layout than `initial`'s. A shard without a
  // model gets its range of `initial`'s values first (the first worker's initial model becomes
  // everyone's); without `initial`, such a shard is waited for (UNAVAILABLE after the retry
  // budget). Returns shard 0's answer with the range widened to the whole model.
  absl::StatusOr<v1::JoinResponse> Join(std::optional<int> requested_rank = std::nullopt,
                                        const ModelValues* initial = nullptr);
  // Joins shard `i` again with `rank` (it answered NOT_FOUND: restarted, or our lease ran out).
  // A shard that came back without a model gets its range of `current` (may be null), at
  // `version`, the shard's version of it.
  absl::Status Rejoin(size_t i, int rank, const ModelValues* current = nullptr,
                      uint64_t version = 0);
  void StartHeartbeats();
  // To every shard (the evaluation goes into each server's summary).
  absl::Status Heartbeat(const v1::EvalReport* eval);
  absl::Status Leave();

  // Pushes payloads[i] (encoded from the update's range i) to shard i for every i, in parallel.
  std::vector<absl::StatusOr<v1::PushAck>> Push(v1::UpdateKind kind,
                                                const std::vector<uint64_t>& base_versions,
                                                uint64_t sample_count,
                                                const std::vector<v1::EncodingParams>& encodings,
                                                const std::vector<std::string>& payloads,
                                                double train_loss, double learning_rate = 0.0);
  // Pushes one shard's payload alone (a re-push, see GrpcSession::RepushOneRoundLate).
  absl::StatusOr<v1::PushAck> PushShard(size_t i, v1::UpdateKind kind, uint64_t base_version,
                                        uint64_t sample_count, const v1::EncodingParams& encoding,
                                        absl::string_view payload, double train_loss,
                                        double learning_rate = 0.0);
  // For every shard i with which[i], pulls its range of `model` from have_versions[i] (see
  // PsClient::Pull), in parallel. Entries for shards not pulled are "unchanged".
  std::vector<absl::StatusOr<PullResult>> Pull(const std::vector<uint64_t>& have_versions,
                                               const std::vector<bool>& which, absl::Duration wait,
                                               absl::Span<float> model);
  // Shard 0's Status, with model_size of the whole model.
  absl::StatusOr<v1::StatusResponse> Status();
  // Summed over shards.
  ClientWireStats wire() const;

 private:
  explicit ShardedClient(const PsClientOptions& options) : options_(options) {}
  const PsClientOptions options_;
  absl::StatusOr<v1::JoinResponse> JoinAll(std::optional<int> requested_rank,
                                           const ModelValues* initial);
  // Joins shard i, first uploading `initial` if it has no model.
  absl::StatusOr<v1::JoinResponse> JoinShard(size_t i, std::optional<int> rank,
                                             const ModelValues* initial, uint64_t version = 0);
  // Runs fn(i) for every shard, on threads when there is more than one.
  template <typename Fn>
  void ForEachShard(Fn fn);

  std::vector<std::unique_ptr<PsClient>> shards_;
  std::vector<KeyRange> ranges_;
};

}  // namespace ps

#endif  // PS_CLIENT_SHARDED_CLIENT_H_
