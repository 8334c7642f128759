// Trainer: one worker's training loop. Joins, loads its shard of the data, runs H local SGD steps
// per round (or one gradient step in gradient mode), pushes, pulls, evaluates, reports, leaves.
#ifndef PS_WORKER_TRAINER_H_
#define PS_WORKER_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/session.h"
#include "common/step_size.h"
#include "ps/v1/ps.pb.h"
#include "worker/data/dataset.h"
#include "worker/models/model.h"

namespace ps {

struct DataOptions {
  std::string format = "fashion_mnist";  // or "libsvm"
  std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
  std::string train_file;   // libsvm
  std::string test_file;    // libsvm
  int64_t train_limit = 0;  // > 0: use only the first N training examples (before partitioning)
  int64_t test_limit = 0;
};

// Loads the training and test sets as `data` says, checked against the model's shape.
absl::StatusOr<Dataset> LoadTrainingData(const DataOptions& data, const ModelSpec& spec);
absl::StatusOr<Dataset> LoadTestData(const DataOptions& data, const ModelSpec& spec);

struct EvalResult {
  double loss = 0.0;  // mean per-example loss, without the L2 term
  double accuracy = 0.0;
};
EvalResult Evaluate(const Model& model, absl::Span<const float> params, const Dataset& data);

// The workers' step-size schedule over a run of total_steps local steps.
StepSchedule WorkerSchedule(const v1::TrainingConfig& config, uint64_t total_steps);
// Rounds each worker runs: config.rounds, or enough for config.epochs passes by all workers.
uint64_t RoundsFor(const v1::TrainingConfig& config, int64_t total_train_examples);

// Seed of worker `rank`'s mini-batch order: different per worker, reproducible per run.
inline uint64_t SamplerSeed(uint64_t data_seed, uint32_t rank) {
  return data_seed * 1000003 + rank;
}

// One test-set evaluation during a run (TrainerOptions::on_eval).
struct EvalRecord {
  uint64_t round = 0;  // rounds done when evaluated
  uint64_t rounds = 0;
  uint64_t version = 0;        // of shard 0
  double elapsed_s = 0.0;      // since Run() started
  double train_start_s = 0.0;  // of elapsed_s, before the first round (join, data, first pull)
  double eval_s = 0.0;         // of elapsed_s, spent evaluating (this one included)
  double train_loss = 0.0;     // mean over the rounds since the previous evaluation
  EvalResult test;
  ClientWireStats wire;  // bytes so far
};

struct TrainerOptions {
  DataOptions data;
  absl::Duration progress_every = absl::Seconds(2);
  bool quiet = false;  // no progress lines
  // Set (by a signal) to stop after the current round's push: the worker then leaves cleanly.
  const std::atomic<bool>* stop = nullptr;
  // Sleep after every local step: makes this worker a slow one (the backup-worker experiment,
  // docs/reproduction.md), as a slower machine or a shared core would.
  absl::Duration step_delay = absl::ZeroDuration();
  // Overlap-Local-SGD (docs/algorithms.md section 10): each round's push and pull run on a
  // thread of their own while the next round's H steps run; when the new global model z (the
  // anchor) arrives, the model s that was sent is pulled towards it, x <- x - pullback (s - z),
  // and the steps taken since are kept. Model-delta runs only (a gradient is needed at once).
  bool overlap = false;
  float overlap_pullback = 1.0f;  // alpha, in [0, 1]
  // Called after every test-set evaluation: every eval_every rounds, and the final one.
  std::function<void(const EvalRecord&)> on_eval;
};

struct TrainingResult {
  v1::TrainingConfig config;
  uint64_t worker_id = 0;
  uint32_t rank = 0;
  uint64_t rounds = 0;
  uint64_t steps = 0;
  uint64_t final_version = 0;
  double final_train_loss = 0.0;
  EvalResult final_test;
  uint64_t stale_refusals = 0;
  // Sharded sync: refused as one round late by one shard while others took the round's update,
  // and pushed again on that shard's current version (see GrpcSession).
  uint64_t stale_repushes = 0;
  uint64_t rejoins = 0;  // times the server had forgotten us (restart, expired lease)
  // Overlap: local steps that ended while the previous round's push and pull were still going on.
  uint64_t steps_overlapped = 0;
  bool stopped_early = false;      // by `stop`, before all rounds ran
  double mean_update_bits = 32.0;  // bits per coordinate of the pushed updates, averaged
  ClientWireStats wire;
  double wall_time_s = 0.0;
  std::vector<float> final_model;
};

// Not thread-safe; one per worker. All protocol work (joining, compression, refusals, re-joins)
// is the Session's; the Trainer owns data, model, steps, evaluation and progress.
class Trainer {
 public:
  // `session` is not joined yet; Run joins it and leaves it at the end.
  Trainer(const TrainerOptions& options, Session* session);
  absl::StatusOr<TrainingResult> Run();

 private:
  struct Setup {
    JoinedRun joined;
    ModelSpec spec;
    std::unique_ptr<Model> model;
    Dataset train, test;
    uint64_t rounds = 0;
    uint32_t h = 1;
  };
  // Joins with the built-in model the server's settings name and loads this worker's data.
  absl::StatusOr<Setup> Prepare();
  void Progress(const std::string& line);

  TrainerOptions options_;
  Session* session_;
  std::string prefix_;
};

}  // namespace ps

#endif  // PS_WORKER_TRAINER_H_
