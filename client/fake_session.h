// FakeSession: the Session interface in one process, without sockets or a server, so that a
// training loop (the built-in Trainer, or yours) can be unit-tested. It behaves as a sync server
// with one member would: every update is applied at once in FP32 (a model delta added, a
// gradient stepped with the run's learning_rate) and makes one new version. It checks a loop's
// use of the session, not the protocol: compression, sharding and retries are not simulated.
// Scripted events let a test check the loop's reaction to what a real run does:
// a stale refusal, and a server that restarted from an older checkpoint.
//
// Not thread-safe, except counters() and the accessors, which take a lock.
#ifndef PS_CLIENT_FAKE_SESSION_H_
#define PS_CLIENT_FAKE_SESSION_H_

#include <cstdint>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "client/session.h"

namespace ps {

class FakeSession : public Session {
 public:
  // `config` is what ServerStatus and Join answer (mode, K, H, update kind, rounds, ...).
  // The model is the first Join's initial values (as on a server that adopts one).
  explicit FakeSession(const v1::TrainingConfig& config);

  // Scripted events, each taking effect at the next Push:
  // the update is refused as stale (dropped; the version does not move).
  void RefuseNextPush();
  // the server restarted from its checkpoint of `version` holding `model` (empty: the current
  // values): the push finds this process forgotten, it re-joins, and the run goes on from there.
  void RestartServerAt(uint64_t version, std::vector<float> model = {});

  absl::StatusOr<v1::StatusResponse> ServerStatus() override;
  absl::StatusOr<JoinedRun> Join(const ModelValues& initial) override;
  absl::Span<const float> model() const override { return model_; }
  uint64_t version() const override;
  absl::StatusOr<RoundResult> Push(absl::Span<const float> update, const UpdateInfo& info) override;
  absl::StatusOr<uint64_t> Refresh(absl::Duration wait) override;
  absl::Status Report(const v1::EvalReport& eval) override;
  absl::Status Leave() override;
  SessionCounters counters() const override;

  // What the loop did, for assertions.
  std::vector<UpdateInfo> pushes() const;
  std::vector<v1::EvalReport> reports() const;
  bool left() const;

 private:
  const v1::TrainingConfig config_;
  Layout layout_;
  std::vector<float> model_;
  bool joined_ = false;
  bool refuse_next_ = false;
  bool restart_next_ = false;
  uint64_t restart_version_ = 0;
  std::vector<float> restart_model_;

  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  SessionCounters counters_ ABSL_GUARDED_BY(mu_);
  std::vector<UpdateInfo> pushes_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::EvalReport> reports_ ABSL_GUARDED_BY(mu_);
  bool left_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ps

#endif  // PS_CLIENT_FAKE_SESSION_H_
