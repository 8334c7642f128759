// Turns pushed updates into new model versions: synchronous rounds or asynchronous application
// with staleness weighting (docs/algorithms.md sections 1-3). Knows nothing of gRPC.
#ifndef PS_SERVER_AGGREGATOR_H_
#define PS_SERVER_AGGREGATOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/step_size.h"
#include "common/thread_pool.h"
#include "ps/v1/ps.pb.h"
#include "server/membership.h"
#include "server/metrics.h"
#include "server/outer_optimizer.h"
#include "server/parameter_store.h"

namespace ps {

struct AggregatorOptions {
  v1::AggregationMode mode = v1::AGGREGATION_MODE_SYNC;
  v1::UpdateKind update_kind = v1::UPDATE_KIND_MODEL_DELTA;
  int num_workers = 1;  // K: async weights are 1/K, staleness is measured in K-version rounds
  double staleness_exponent = 0.5;  // a in s(tau) = tau^-a for tau > 1
  double max_staleness = 4.0;       // rounds; older async updates are refused
  // Gradient mode: the server's step size at its step t, which the version tells (sync: a
  // version per step; async: a round of K updates per step), so a resumed server goes on with it.
  StepSchedule server_step{v1::LEARNING_RATE_SCHEDULE_CONSTANT, 0.1f};
  // Sync rounds that never hang (docs/algorithms.md section 6).
  int backup_workers = 0;  // b: close at the first num_workers - b updates
  absl::Duration round_deadline = absl::InfiniteDuration();  // counted from the first update
  int min_quorum = 1;  // updates a round needs before the deadline may close it
  v1::LatePolicy late_policy = v1::LATE_POLICY_DROP;
  // > 0: an update whose largest coordinate change (times the server's step) exceeds this many
  // times the model's largest |coordinate| (at least 1) is refused as INVALID_ARGUMENT. 0 = off.
  double max_update_ratio = 0.0;
  // What a delta-mode round's average (or an async update) does to the model
  // (docs/algorithms.md section 8); plain averaging by default.
  OuterOptimizerOptions outer;
  // Threads besides the caller's that decode and apply updates over disjoint ranges of the model
  // (docs/architecture.md, "The apply path"). 0: the caller alone.
  int apply_threads = 0;
  // Async: at most this many updates that queued up while another batch was applied are applied
  // together, as one copy of the model (group commit). 1 = one at a time.
  int max_batch = 64;
  Clock* clock = Clock::Real();
  // For tests: called by a batch's leader with the batch's size, after it took the batch and
  // before it applies it, with no lock held.
  std::function<void(size_t)> on_batch_for_test;
};

// One decoded-on-demand update. `payload` must outlive the Submit call.
struct Update {
  uint64_t worker_id = 0;
  uint64_t sequence = 0;
  v1::UpdateKind kind = v1::UPDATE_KIND_UNSPECIFIED;
  uint64_t base_version = 0;
  uint64_t sample_count = 0;
  v1::EncodingParams encoding;
  absl::string_view payload;
  double train_loss = 0.0;
  double inner_learning_rate = 0.0;  // the worker's step size for this update (SlowMo)
};

struct SubmitResult {
  bool duplicate = false;
  bool folded = false;   // sync, late: went into the open round with a staleness weight
  uint64_t version = 0;  // the store's version after the submit
};

struct AggregatorStats {
  uint64_t applied = 0;  // updates accepted (into a round, or applied in async mode)
  uint64_t refused_stale = 0;
  uint64_t refused_invalid = 0;
  uint64_t duplicate = 0;
  uint64_t rounds_completed = 0;  // versions the aggregator published
  // Async group commit: batches applied, and the largest (a batch of n publishes n versions).
  uint64_t batches = 0;
  uint64_t largest_batch = 0;
  double last_train_loss = 0.0;
  // Sync rounds.
  uint64_t rounds_closed_complete = 0;
  uint64_t rounds_closed_by_quorum = 0;
  uint64_t rounds_closed_by_deadline = 0;
  uint64_t rounds_abandoned = 0;
  uint64_t late_dropped = 0;      // also counted in refused_stale
  uint64_t late_folded = 0;       // also counted in applied
  absl::Duration max_round_wait;  // first update to close, the slowest round
  absl::Duration last_round_wait;
};

// How the open sync round ended when the server stopped.
enum class RoundEnd { kNoneOpen, kClosed, kAbandoned };

// s(tau) = 1 for tau <= 1, else tau^-exponent.
double StalenessWeight(double tau, double exponent);

// Thread-safe. Lock order: Aggregator, then Membership and ParameterStore.
class Aggregator {
 public:
  Aggregator(const AggregatorOptions& options, ParameterStore* store, Membership* membership);

  // Validates `update` completely before it changes anything: an error leaves the model and the
  // open round as they were.
  //   NOT_FOUND: the worker is not a member.   INVALID_ARGUMENT: wrong kind, no samples, a base
  //   version from the future, a malformed payload (also on a retry: it is validated before the
  //   duplicate check), or an update that would take a model coordinate past
  //   kMaxModelMagnitude (float's range / 2; see the README's "Bad input").   FAILED_PRECONDITION:
  //   too stale (names both versions), or a second update for the same sync round.
  // A sequence number at or below the worker's last accepted one is a retry: result.duplicate.
  absl::StatusOr<SubmitResult> Submit(const Update& update);

  // Sync mode: closes the open round if it is complete, has its quorum, or is past its deadline
  // with the minimum quorum. Call after members leave or expire, and periodically for deadlines.
  void MaybeCloseRound();
  // Sync mode, at shutdown: closes the open round with what it has if that is at least
  // min_quorum updates, else drops it. Later submits are refused with UNAVAILABLE.
  RoundEnd FinishOpenRound();
  // Drops what is kept per worker (its last sequence number) for a worker that is no longer a
  // member: its pushes are refused with NOT_FOUND from now on, so no retry needs it.
  void Forget(uint64_t worker_id);
  // Counters carried over from a checkpoint.
  void RestoreCounters(uint64_t rounds_completed, uint64_t applied);
  // The model with the outer optimizer's state of the same version, for a checkpoint; and
  // restoring that state (INVALID_ARGUMENT if it is not this optimizer's).
  struct Snapshot {
    StoreState store;
    uint64_t outer_steps = 0;
    std::vector<std::vector<float>> outer_buffers;
  };
  Snapshot SnapshotForCheckpoint() const;
  absl::Status RestoreOuter(uint64_t steps, std::vector<std::vector<float>> buffers);

  AggregatorStats stats() const;
  // Workers whose last sequence number is kept (members that pushed).
  size_t tracked_workers() const;
  // Async updates queued for a batch or in the one being applied.
  size_t queued_updates() const;
  // Staleness of every accepted update in rounds (0 for an on-time sync update), and how long sync
  // rounds waited from their first update to their close, in seconds.
  Histogram::Snapshot staleness() const { return staleness_.Get(); }
  Histogram::Snapshot round_wait() const { return round_wait_.Get(); }
  // Their buckets (also for the empty histograms a server without a model reports).
  static std::vector<double> StalenessBuckets() { return {0, 0.5, 1, 2, 3, 4, 8}; }
  static std::vector<double> RoundWaitBuckets() {
    return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  }
  const AggregatorOptions& options() const { return options_; }

 private:
  // An async update waiting in the batch queue, and what its batch's leader decided for it.
  struct Writer {
    const Update* update = nullptr;
    double update_max_abs = 0.0;
    bool done = false;
    absl::StatusOr<SubmitResult> result = SubmitResult{};
    uint64_t previous_sequence = 0;  // to put back if the apply refuses it
    bool had_sequence = false;
    double tau = 0.0;     // staleness in rounds, at the version it is applied at
    double weight = 0.0;  // what its decoded values are multiplied by
  };

  // kind, sample_count and the payload: the checks that need no lock.
  absl::Status ValidateAlone(const Update& update, double* update_max_abs) const;
  // The checks against the aggregator's state: the ratio, a retry, the base version. A result
  // for a retry (duplicate), nullopt to go on.
  absl::StatusOr<std::optional<SubmitResult>> CheckAgainstState(const Update& update,
                                                                double update_max_abs,
                                                                uint64_t version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The counters, the retry table and the member's count, for an update's outcome.
  void Account(const Update& update, const absl::StatusOr<SubmitResult>& result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SubmitResult> SubmitSync(const Update& update, uint64_t version,
                                          double update_max_abs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The factor the server applies an update with: 1 for deltas, -lr_t for gradients (sync).
  double ServerStep() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT past options_.max_update_ratio.
  absl::Status CheckUpdateRatio(const Update& update, double update_max_abs) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // INVALID_ARGUMENT if the round's model could leave kMaxModelMagnitude with this update in it.
  absl::Status CheckRoundStaysInRange(const Update& update, double update_max_abs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SubmitResult> FoldLate(const Update& update, uint64_t version,
                                        double update_max_abs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Async (docs/algorithms.md section 2, group commit in docs/architecture.md): queues the update;
  // the update at the queue's front leads a batch of what queued behind it. Returns the version
  // the caller publishes to waiting pulls once it holds no lock (0: nothing to publish).
  absl::StatusOr<SubmitResult> SubmitAsync(const Update& update, double update_max_abs,
                                           uint64_t* publish) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t LeadBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admits `w` to be applied to `version` (its staleness and weight: the current version plus
  // the updates admitted before it in the batch), or gives it its refusal.
  void AdmitAsync(Writer* w, uint64_t current_version, uint64_t version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AssignAsyncWeight(Writer* w, uint64_t version) const;
  // Applies the admitted writers as one version each, in one pass over the model if they all
  // stay in range, else one at a time (refusing only those that do not). Sets their results and
  // returns the last version published (0 if none), and the model's new largest |x_i|.
  uint64_t ApplyBatch(const std::vector<Writer*>& batch, float* model_max_abs)
      ABSL_LOCKS_EXCLUDED(mu_);
  // next = current + sum of the writers' weighted updates, over ranges on the apply pool.
  absl::Status ApplyTiles(const std::vector<Writer*>& batch, absl::Span<const float> current,
                          absl::Span<float> next, float* max_abs);
  absl::StatusOr<uint64_t> ApplyDelayedNesterov(Writer* w, float* max_abs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_);
  // fn(begin, end) over [0, n) in ranges that start at multiples of `alignment`, in parallel.
  void ForRanges(uint64_t n, uint64_t alignment, absl::FunctionRef<void(uint64_t, uint64_t)> fn);
  void AddToRoundMean(const Update& update, double weight) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseRoundIfComplete() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseRound() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AggregatorOptions options_;
  ParameterStore* const store_;
  Membership* const membership_;

  mutable absl::Mutex mu_;
  std::map<uint64_t, uint64_t> last_sequence_ ABSL_GUARDED_BY(mu_);  // worker id -> sequence
  // The open sync round: the weighted mean of its updates so far (AddToRoundMean), and the sum of
  // their weights (sample_count, times s(tau) when folded). While the weight is 0, the mean's
  // contents are left from an earlier round.
  // It is storage of the store's (TakeStorage), published as the next version when the round
  // closes.
  std::shared_ptr<std::vector<float>> round_mean_ ABSL_GUARDED_BY(mu_);
  double round_weight_ ABSL_GUARDED_BY(mu_) = 0.0;
  // The largest |x_i| of the current model, for the range and ratio checks of each update.
  double model_max_abs_ ABSL_GUARDED_BY(mu_) = 0.0;
  std::set<uint64_t> round_pushed_ ABSL_GUARDED_BY(mu_);  // on-time updates; folded ones excluded
  absl::Time round_first_update_ ABSL_GUARDED_BY(mu_);
  double round_lr_sum_ ABSL_GUARDED_BY(mu_) = 0.0;    // sum of sample_count * inner lr
  std::deque<Writer*> writers_ ABSL_GUARDED_BY(mu_);  // async: the batch queue
  // Held by an async batch's leader while it applies (without mu_), and by whoever else touches
  // the outer optimizer's state, so that a checkpoint sees it at the store's version.
  mutable absl::Mutex apply_mu_ ABSL_ACQUIRED_AFTER(mu_);
  OuterOptimizer outer_ ABSL_GUARDED_BY(apply_mu_);
  std::vector<float> scratch_
      ABSL_GUARDED_BY(apply_mu_);           // an async update, decoded (delayed Nesterov)
  std::unique_ptr<ThreadPool> apply_pool_;  // null without apply_threads
  // Members that joined after this serial (after the round opened) are not waited for.
  uint64_t round_join_serial_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  AggregatorStats stats_ ABSL_GUARDED_BY(mu_);
  Histogram staleness_{StalenessBuckets()};
  Histogram round_wait_{RoundWaitBuckets()};
};

}  // namespace ps

#endif  // PS_SERVER_AGGREGATOR_H_
