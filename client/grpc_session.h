// GrpcSession: the Session over gRPC (what Session::Connect returns). The protocol's rules are
// here and nowhere else: how a process joins S shards, keeps one round on all of them, and
// recovers from refusals and re-joins (docs/client.md).
#ifndef PS_CLIENT_GRPC_SESSION_H_
#define PS_CLIENT_GRPC_SESSION_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "client/compression.h"
#include "client/session.h"
#include "client/sharded_client.h"

namespace ps {

class GrpcSession : public Session {
 public:
  GrpcSession(const SessionOptions& options, std::unique_ptr<ShardedClient> client);
  ~GrpcSession() override;

  absl::StatusOr<v1::StatusResponse> ServerStatus() override;
  absl::StatusOr<JoinedRun> Join(const ModelValues& initial) override;
  absl::Span<const float> model() const override { return global_; }
  uint64_t version() const override;
  absl::StatusOr<RoundResult> Push(absl::Span<const float> update, const UpdateInfo& info) override;
  absl::StatusOr<uint64_t> Refresh(absl::Duration wait) override;
  absl::Status Report(const v1::EvalReport& eval) override;
  absl::Status Leave() override;
  SessionCounters counters() const override;

  ShardedClient* client() { return client_.get(); }

 private:
  // Joins shard i again with our rank (it answered NOT_FOUND) and takes its model in full.
  absl::Status Rejoin(size_t i);
  // Brings every shard i newer than have[i]; in sync mode also to the same number of versions
  // past `have` on every shard, so that the model is one round's everywhere.
  absl::Status PullAll(std::vector<uint64_t> have, RoundResult* round);
  // Sharded sync: pushes again what a shard refused as exactly one round late (see the .cc).
  absl::Status RepushOneRoundLate(v1::UpdateKind kind, const UpdateInfo& info,
                                  std::vector<uint64_t>* have,
                                  std::vector<absl::StatusOr<v1::PushAck>>* acks,
                                  RoundResult* round);
  bool sync() const { return config_.mode() == v1::AGGREGATION_MODE_SYNC; }

  const SessionOptions options_;
  std::unique_ptr<ShardedClient> client_;
  std::string prefix_;  // "[worker R] " for log lines
  bool joined_ = false;
  bool left_ = false;
  v1::TrainingConfig config_;
  Layout layout_;
  uint32_t rank_ = 0;
  std::vector<float> global_;
  std::vector<uint64_t> versions_;             // of each shard's part of global_
  std::vector<UpdateCompressor> compressors_;  // one per shard: own scales, bits and residual
  std::vector<v1::EncodingParams> encodings_;
  std::vector<std::string> payloads_;
  uint64_t messages_ = 0;  // updates compressed so far (QSGD seeds, DQ-SGD's schedule)

  std::atomic<uint64_t> updates_{0}, stale_refusals_{0}, stale_repushes_{0}, rejoins_{0};
  std::atomic<double> bits_sum_{0.0};
};

}  // namespace ps

#endif  // PS_CLIENT_GRPC_SESSION_H_
