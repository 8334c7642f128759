// End-to-end training through a real server on loopback: three workers, softmax regression on a
// Fashion-MNIST subset, once with synchronous and once with asynchronous Local SGD.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using testing::Connect;
using testing::SmallServerOptions;
using testing::StartServer;

struct RunOutcome {
  std::vector<TrainingResult> results;
  v1::StatusResponse status;
  EvalResult final_model;  // the server's model once every worker finished
  // The server's checkpoint written once every worker finished (its outer optimizer's state).
  std::optional<Checkpoint> checkpoint;
};

RunOutcome TrainThreeWorkers(v1::AggregationMode mode,
                             const OuterOptimizerOptions& outer = OuterOptimizerOptions(),
                             v1::Encoding both_ways = v1::ENCODING_FP32) {
  ServerOptions options = SmallServerOptions(mode, 3, 8);
  options.outer = outer;
  options.training.add_allowed_encodings(both_ways);
  options.training.mutable_update_encoding()->set_encoding(both_ways);
  options.training.mutable_pull_encoding()->set_encoding(both_ways);
  options.training.set_epochs(5.0f);
  options.training.set_learning_rate(0.2f);
  options.training.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_COSINE);
  options.training.set_eval_every(10);
  options.checkpoint_dir =
      std::filesystem::temp_directory_path() / ("ps_training_test_" + std::to_string(::getpid()));
  std::filesystem::remove_all(options.checkpoint_dir);
  auto server = StartServer(options);
  RunOutcome outcome;
  if (server == nullptr) return outcome;
  outcome.results = testing::TrainWorkers(*server, 3, 20000, 2000);
  outcome.status = server->GetStatus();
  outcome.final_model = testing::EvaluateServerModel(*server, 2000);
  EXPECT_TRUE(server->Checkpoint().ok());
  auto loaded = LoadNewestCheckpoint(options.checkpoint_dir);
  EXPECT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status();
  if (loaded.ok() && loaded->has_value()) outcome.checkpoint = std::move((*loaded)->checkpoint);
  server.reset();
  std::filesystem::remove_all(options.checkpoint_dir);
  std::printf("final model: version %llu, test accuracy %.4f, stale refusals %llu\n",
              static_cast<unsigned long long>(outcome.status.version()),
              outcome.final_model.accuracy,
              static_cast<unsigned long long>(outcome.status.updates_refused_stale()));
  return outcome;
}

TEST(Training, SyncLocalSgdWithThreeWorkersReachesEightyPercent) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  RunOutcome run = TrainThreeWorkers(v1::AGGREGATION_MODE_SYNC);
  ASSERT_EQ(run.results.size(), 3u);
  // 5 epochs of 20000 examples over 3 workers * 8 steps * 32 = 130.2 -> 131 rounds, one version
  // each.
  EXPECT_EQ(run.status.version(), 1u + 131u);
  EXPECT_EQ(run.status.rounds_completed(), 131u);
  EXPECT_EQ(run.status.updates_applied(), 3u * 131u);
  for (const TrainingResult& r : run.results) {
    EXPECT_GE(r.final_test.accuracy, 0.80) << "worker " << r.rank;
    EXPECT_EQ(r.final_version, 132u);
    EXPECT_EQ(r.final_model, run.results[0].final_model) << "sync workers end on one model";
    EXPECT_GT(r.wire.bytes_sent, 131u * 7850u * 4u);
  }
  EXPECT_GE(run.status.last_eval().test_accuracy(), 0.80);
  EXPECT_GE(run.final_model.accuracy, 0.80);
}

TEST(Training, AsyncLocalSgdWithThreeWorkersReachesEightyPercent) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  RunOutcome run = TrainThreeWorkers(v1::AGGREGATION_MODE_ASYNC);
  ASSERT_EQ(run.results.size(), 3u);
  // Every accepted update is one version; refused (too stale) ones are not.
  EXPECT_EQ(run.status.version(), 1u + run.status.updates_applied());
  EXPECT_EQ(run.status.updates_applied() + run.status.updates_refused_stale(), 3u * 131u);
  // The trained model is the server's once all workers are done; a worker that finished early
  // evaluated a model without the others' last updates.
  EXPECT_GE(run.final_model.accuracy, 0.80);
  for (const TrainingResult& r : run.results) {
    EXPECT_GE(r.final_test.accuracy, 0.75) << "worker " << r.rank;
  }
}

// The outer optimizers through the real server and workers: DiLoCo's outer Nesterov (sync),
// SlowMo and FedAdam (sync) and delayed Nesterov (async) all train the model.
TEST(Training, EveryOuterOptimizerTrains) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  for (const char* name : {"nesterov", "slowmo", "fedadam", "delayed_nesterov"}) {
    OuterOptimizerOptions outer = DefaultOuterOptions(name);
    const bool async = outer.kind == OuterKind::kDelayedNesterov;
    if (outer.kind == OuterKind::kFedAdam) outer.lr = 0.01;  // an adaptive step in model units
    RunOutcome run =
        TrainThreeWorkers(async ? v1::AGGREGATION_MODE_ASYNC : v1::AGGREGATION_MODE_SYNC, outer);
    ASSERT_EQ(run.results.size(), 3u) << name;
    EXPECT_GE(run.final_model.accuracy, 0.78) << name;
    // The rule acted, not plain averaging: the server stepped it once per round (sync) or once
    // per update (delayed Nesterov counts updates, with a momentum step every K), and its state
    // (momentum; Adam's two moments) is not zero. Delayed Nesterov's second buffer is the
    // accumulation of the current period, zero right after a momentum step, so it is not checked.
    ASSERT_TRUE(run.checkpoint.has_value()) << name;
    const v1::CheckpointHeader& header = run.checkpoint->header;
    EXPECT_EQ(header.outer_optimizer(), OuterKindName(outer.kind));  // nesterov is "sgd"
    EXPECT_EQ(header.outer_steps(),
              async ? run.status.updates_applied() : run.status.rounds_completed())
        << name;
    const bool two_buffers = outer.kind == OuterKind::kFedAdam || async;
    ASSERT_EQ(run.checkpoint->outer.size(), two_buffers ? 2u : 1u) << name;
    const size_t checked = outer.kind == OuterKind::kFedAdam ? 2 : 1;
    for (size_t b = 0; b < checked; ++b) {
      const std::vector<float>& buffer = run.checkpoint->outer[b];
      double norm2 = 0.0;
      for (float v : buffer) norm2 += double{v} * v;
      EXPECT_GT(std::sqrt(norm2), 1e-6) << name << ": buffer " << b << " stayed zero";
    }
  }
}

// 16-bit floats both ways (updates with error feedback, pulls as deltas of the broadcast model)
// train as well as FP32: within 0.3 points of test accuracy.
TEST(Training, Fp16AndBf16BothWaysMatchFp32Accuracy) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const RunOutcome fp32 = TrainThreeWorkers(v1::AGGREGATION_MODE_SYNC);
  for (v1::Encoding e : {v1::ENCODING_FP16, v1::ENCODING_BF16}) {
    const RunOutcome run = TrainThreeWorkers(v1::AGGREGATION_MODE_SYNC, OuterOptimizerOptions(), e);
    ASSERT_EQ(run.results.size(), 3u);
    EXPECT_NEAR(run.final_model.accuracy, fp32.final_model.accuracy, 0.003) << v1::Encoding_Name(e);
    // Half the bytes of FP32 both ways, give or take the messages' framing.
    EXPECT_LT(run.results[0].wire.bytes_sent, 0.55 * fp32.results[0].wire.bytes_sent);
    EXPECT_LT(run.results[0].wire.bytes_received, 0.55 * fp32.results[0].wire.bytes_received);
    EXPECT_EQ(run.results[0].final_model, run.results[1].final_model) << "one broadcast model";
  }
}

}  // namespace
}  // namespace ps
