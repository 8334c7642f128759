#include "worker/trainer.h"

#include <atomic>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "client/fake_session.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(WorkerSchedule, TakesTheConfiguredScheduleOverTheRun) {
  v1::TrainingConfig c;
  c.set_learning_rate(0.4f);
  c.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_COSINE);
  const StepSchedule s = WorkerSchedule(c, 100);
  EXPECT_FLOAT_EQ(s.At(0), 0.4f);
  EXPECT_NEAR(s.At(50), 0.2f, 1e-6);
}

TEST(RoundsFor, DerivesRoundsFromEpochsOverAllWorkers) {
  v1::TrainingConfig c;
  c.set_num_workers(4);
  c.set_local_steps(8);
  c.set_batch_size(32);
  c.set_epochs(2.0f);
  // 2 * 60000 / (4 * 8 * 32) = 117.2 -> 118
  EXPECT_EQ(RoundsFor(c, 60000), 118u);
  c.set_rounds(5);
  EXPECT_EQ(RoundsFor(c, 60000), 5u);
}

TEST(Evaluate, ReportsMeanLossAndAccuracyOverBlocks) {
  auto model = CreateModel({"logistic", 1, 2, 0, 0.0f});
  ASSERT_TRUE(model.ok());
  Dataset data;
  data.num_classes = 2;
  const int n = 5000;  // more than one evaluation block
  data.features.resize(n, 1);
  for (int i = 0; i < n; ++i) {
    data.features(i, 0) = (i % 2) ? 1.0f : -1.0f;
    data.labels.push_back(i % 4 == 0 ? 1 : (i % 2));  // every 4th example is mislabelled
  }
  const std::vector<float> params = {2.0f, 0.0f};
  const EvalResult r = Evaluate(**model, params, data);
  EXPECT_NEAR(r.accuracy, 0.75, 1e-12);
  const double right = std::log1p(std::exp(-2.0)), wrong = std::log1p(std::exp(2.0));
  EXPECT_NEAR(r.loss, 0.75 * right + 0.25 * wrong, 1e-5);
}

// The Trainer against FakeSession: its loop, without sockets or a server.
constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

bool FashionMnistInstalled() {
  return std::ifstream(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz").good();
}

v1::TrainingConfig SoftmaxRun(uint64_t rounds, uint32_t local_steps) {
  v1::TrainingConfig c;
  c.set_mode(v1::AGGREGATION_MODE_SYNC);
  c.set_update_kind(v1::UPDATE_KIND_MODEL_DELTA);
  c.set_model("softmax");
  c.set_input_dim(784);
  c.set_num_classes(10);
  c.set_num_workers(1);
  c.set_local_steps(local_steps);
  c.set_rounds(rounds);
  c.set_batch_size(32);
  c.set_learning_rate(0.05f);
  c.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_CONSTANT);
  c.set_data_seed(7);
  c.set_partition(v1::PARTITION_IID);
  c.mutable_update_encoding()->set_encoding(v1::ENCODING_FP32);
  return c;
}

TrainerOptions SmallData() {
  TrainerOptions o;
  o.data.fashion_mnist_dir = kFashionMnistDir;
  o.data.train_limit = 2000;
  o.data.test_limit = 500;
  o.quiet = true;
  return o;
}

TEST(Trainer, TrainsTheBuiltInModelThroughAFakeSession) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeSession session(SoftmaxRun(30, 4));
  Trainer trainer(SmallData(), &session);
  absl::StatusOr<TrainingResult> result = trainer.Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->rounds, 30u);
  EXPECT_EQ(result->steps, 120u);
  EXPECT_EQ(result->final_version, 31u);
  EXPECT_GT(result->final_test.accuracy, 0.6);
  const std::vector<UpdateInfo> pushes = session.pushes();
  ASSERT_EQ(pushes.size(), 30u);
  for (uint64_t r = 0; r < pushes.size(); ++r) {
    EXPECT_EQ(pushes[r].round, r);
    EXPECT_EQ(pushes[r].total_rounds, 30u);
    EXPECT_EQ(pushes[r].sample_count, 4u * 32u);
    EXPECT_FLOAT_EQ(pushes[r].learning_rate, 0.05);
    EXPECT_TRUE(std::isfinite(pushes[r].train_loss));
  }
  EXPECT_LT(pushes.back().train_loss, pushes.front().train_loss);
  // The final evaluation is reported, and the trainer leaves; the model it returns is the
  // session's.
  ASSERT_FALSE(session.reports().empty());
  EXPECT_DOUBLE_EQ(session.reports().back().test_accuracy(), result->final_test.accuracy);
  EXPECT_TRUE(session.left());
  EXPECT_EQ(result->final_model,
            std::vector<float>(session.model().begin(), session.model().end()));
}

// Overlap-Local-SGD with K = 1: each push runs behind the next round's steps. The global model
// that comes back is what was sent, so whatever the pullback the run is plain SGD over the same
// batches (up to the rounding of sending x - z and adding it back).
TEST(Trainer, OverlapIsPlainSgdForOneWorker) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeSession blocking_session(SoftmaxRun(20, 4));
  absl::StatusOr<TrainingResult> blocking = Trainer(SmallData(), &blocking_session).Run();
  ASSERT_TRUE(blocking.ok()) << blocking.status();
  for (float pullback : {0.0f, 0.5f, 1.0f}) {
    FakeSession session(SoftmaxRun(20, 4));
    TrainerOptions options = SmallData();
    options.overlap = true;
    options.overlap_pullback = pullback;
    absl::StatusOr<TrainingResult> overlapped = Trainer(options, &session).Run();
    ASSERT_TRUE(overlapped.ok()) << overlapped.status();
    EXPECT_EQ(overlapped->rounds, 20u);
    EXPECT_EQ(session.pushes().size(), 20u);
    EXPECT_EQ(overlapped->final_version, 21u);
    ASSERT_EQ(overlapped->final_model.size(), blocking->final_model.size());
    for (size_t i = 0; i < blocking->final_model.size(); ++i) {
      ASSERT_NEAR(overlapped->final_model[i], blocking->final_model[i], 1e-5)
          << "coordinate " << i << ", pullback " << pullback;
    }
  }
}

TEST(Trainer, OverlapWithPullbackStillLearnsAndRefusesGradientRuns) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeSession session(SoftmaxRun(30, 4));
  TrainerOptions options = SmallData();
  options.overlap = true;
  absl::StatusOr<TrainingResult> result = Trainer(options, &session).Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->rounds, 30u);
  EXPECT_GT(result->final_test.accuracy, 0.6);
  v1::TrainingConfig gradient = SoftmaxRun(3, 1);
  gradient.set_update_kind(v1::UPDATE_KIND_GRADIENT);
  FakeSession gradient_session(gradient);
  absl::StatusOr<TrainingResult> refused = Trainer(options, &gradient_session).Run();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Trainer, FollowsTheServerBackToItsCheckpointAfterARestart) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  v1::TrainingConfig config = SoftmaxRun(10, 2);
  config.set_eval_every(5);
  FakeSession session(config);
  TrainerOptions options = SmallData();
  bool restarted = false;
  // After round 5 (version 6) the server "restarts" from its checkpoint of version 3.
  options.on_eval = [&](const EvalRecord&) {
    if (!restarted) session.RestartServerAt(3);
    restarted = true;
  };
  Trainer trainer(options, &session);
  absl::StatusOr<TrainingResult> result = trainer.Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->rejoins, 1u);
  // Rounds 1-5, the push that found the server restarted, then rounds 3-10 again.
  const std::vector<UpdateInfo> pushes = session.pushes();
  ASSERT_EQ(pushes.size(), 14u);
  EXPECT_EQ(pushes[5].round, 5u);
  EXPECT_EQ(pushes[6].round, 2u);
  EXPECT_EQ(pushes.back().round, 9u);
  EXPECT_EQ(result->final_version, 11u);
}

TEST(Trainer, CountsAStaleRefusalAndGoesOn) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeSession session(SoftmaxRun(6, 1));
  session.RefuseNextPush();
  Trainer trainer(SmallData(), &session);
  absl::StatusOr<TrainingResult> result = trainer.Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stale_refusals, 1u);
  EXPECT_EQ(result->rounds, 6u);
  EXPECT_EQ(result->final_version, 6u);  // 6 pushes, 5 applied, from version 1
}

TEST(Trainer, StopsAfterTheCurrentRoundWhenAskedAndLeaves) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  v1::TrainingConfig config = SoftmaxRun(20, 1);
  config.set_eval_every(4);
  FakeSession session(config);
  std::atomic<bool> stop{false};
  TrainerOptions options = SmallData();
  options.stop = &stop;
  options.on_eval = [&](const EvalRecord&) { stop = true; };
  Trainer trainer(options, &session);
  absl::StatusOr<TrainingResult> result = trainer.Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->stopped_early);
  EXPECT_EQ(result->rounds, 4u);
  EXPECT_TRUE(session.left());
}

TEST(Trainer, SleepsStepDelayAfterEveryLocalStep) {
  if (!FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  FakeSession session(SoftmaxRun(3, 4));  // 3 rounds of 4 local steps
  TrainerOptions options = SmallData();
  options.step_delay = absl::Milliseconds(20);
  Trainer trainer(options, &session);
  const absl::Time start = absl::Now();
  absl::StatusOr<TrainingResult> result = trainer.Run();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->steps, 12u);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(12 * 20));  // a lower bound only
}

}  // namespace
}  // namespace ps
