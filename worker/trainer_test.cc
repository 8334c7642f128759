#include "worker/trainer.h"

#include <cmath>

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

}  // namespace
}  // namespace ps
