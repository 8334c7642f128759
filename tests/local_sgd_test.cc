// Local SGD through a real server: the K = 1, H = 1 special case and the sync averaging step.
#include <algorithm>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using testing::Connect;
using testing::ConnectShards;
using testing::SmallServerOptions;
using testing::StartServer;

// One worker trained against a server with `options` on the first 1000 training images.
TrainerOptions OneWorkerOptions() {
  TrainerOptions trainer_options;
  trainer_options.data.fashion_mnist_dir = testing::kFashionMnistDir;
  trainer_options.data.train_limit = 1000;
  trainer_options.data.test_limit = 100;
  trainer_options.quiet = true;
  return trainer_options;
}

absl::StatusOr<TrainingResult> TrainOneWorker(const ParameterServer& server) {
  auto session = testing::ConnectSession({&server});
  Trainer trainer(OneWorkerOptions(), session.get());
  return trainer.Run();
}

size_t Differing(const std::vector<float>& a, const std::vector<float>& b) {
  size_t differing = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) differing += a[i] != b[i];
  return differing;
}

TEST(LocalSgd, OneWorkerOneLocalStepIsExactlyPlainMiniBatchSgd) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  options.training.set_rounds(40);
  options.training.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_INVERSE_TIME);
  options.training.set_lr_decay(0.01f);
  options.training.set_model_seed(3);
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<TrainingResult> result = TrainOneWorker(*server);
  ASSERT_TRUE(result.ok()) << result.status();
  const TrainerOptions trainer_options = OneWorkerOptions();

  // The reference: plain mini-batch SGD, same data, same batches, same schedule, same start.
  const v1::TrainingConfig& config = options.training;
  const ModelSpec spec = ModelSpecFromConfig(config);
  auto model = CreateModel(spec);
  ASSERT_TRUE(model.ok());
  auto all = LoadTrainingData(trainer_options.data, spec);
  ASSERT_TRUE(all.ok()) << all.status();
  const Dataset train =
      all->Subset(PartitionIndices(*all, 1, 0, PartitionScheme::kIid, config.data_seed()));
  BatchSampler sampler(&train, config.batch_size(), SamplerSeed(config.data_seed(), 0));
  std::vector<float> x((*model)->num_parameters()), grad(x.size());
  (*model)->Initialize(options.training.model_seed(), absl::MakeSpan(x));
  RowMatrix bx;
  std::vector<int32_t> by;
  const StepSchedule schedule = WorkerSchedule(config, config.rounds());
  for (uint64_t t = 0; t < config.rounds(); ++t) {
    sampler.Next(&bx, &by);
    (*model)->LossAndGradient(x, bx, by, absl::MakeSpan(grad));
    const float lr = schedule.At(t);
    for (size_t i = 0; i < x.size(); ++i) x[i] -= lr * grad[i];
  }
  EXPECT_EQ(Differing(result->final_model, x), 0u) << "parameters differ from plain SGD";
  EXPECT_EQ(server->Model().values->at(7), x[7]);
  EXPECT_EQ(result->final_version, config.rounds() + 1);
}

TEST(LocalSgd, GradientModeStepsWithTheServersScheduleExactlyLikeOneLocalStep) {
  // K = 1: a gradient the server steps with its cosine schedule, and the step -lr_t g the worker
  // took with the same schedule, are the same arithmetic x - lr_t g, step for step.
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  options.training.set_rounds(40);
  options.training.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_COSINE);
  options.training.set_learning_rate(0.05f);
  options.server_learning_rate = 0.05f;
  auto delta_server = StartServer(options);
  ASSERT_NE(delta_server, nullptr);
  absl::StatusOr<TrainingResult> local_sgd = TrainOneWorker(*delta_server);
  ASSERT_TRUE(local_sgd.ok()) << local_sgd.status();
  options.training.set_update_kind(v1::UPDATE_KIND_GRADIENT);
  auto gradient_server = StartServer(options);
  ASSERT_NE(gradient_server, nullptr);
  absl::StatusOr<TrainingResult> gradient = TrainOneWorker(*gradient_server);
  ASSERT_TRUE(gradient.ok()) << gradient.status();
  EXPECT_EQ(Differing(gradient->final_model, local_sgd->final_model), 0u);
  EXPECT_EQ(Differing(*gradient_server->Model().values, gradient->final_model), 0u)
      << "the server holds what the worker ended with";
}

TEST(LocalSgd, GradientModeWithACosineScheduleNeedsTheRunLength) {
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  options.training.set_update_kind(v1::UPDATE_KIND_GRADIENT);
  options.training.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_COSINE);
  options.training.set_rounds(0);
  const absl::Status s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("needs rounds > 0"), absl::string_view::npos) << s;
  options.training.set_rounds(100);
  EXPECT_TRUE(options.Validate().ok());
}

// Each client has a connection of its own, as separate processes do: over one shared connection
// with the server's limit of streams per connection, the pulls waiting for the round held the
// streams the round's last pushes needed, and the round closed only when those pulls timed out.
TEST(LocalSgd, ClientsInOneProcessDoNotShareAConnectionsStreams) {
  constexpr int kWorkers = 8;
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, kWorkers, 1);
  options.max_streams_per_connection = 4;  // the least it may be
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const size_t d = server->Model().values->size();
  std::vector<std::unique_ptr<PsClient>> clients;
  for (int k = 0; k < kWorkers; ++k) {
    clients.push_back(Connect(*server, "w" + std::to_string(k)));
    ASSERT_TRUE(clients.back()->Join().ok());
  }
  const absl::Time start = absl::Now();
  std::vector<uint64_t> versions(kWorkers);
  std::vector<std::thread> threads;
  auto push_and_pull = [&](int k) {
    const std::vector<float> delta(d, 0.001f);
    ASSERT_TRUE(clients[k]->Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 32, delta, 0.0).ok());
    std::vector<float> pulled(d);
    auto r = clients[k]->Pull(1, absl::Seconds(15), absl::MakeSpan(pulled));
    ASSERT_TRUE(r.ok()) << r.status();
    versions[k] = r->version;
  };
  // Half push and wait for the round in their pulls, as many as a connection has streams; then
  // the others push.
  for (int k = 0; k < kWorkers / 2; ++k) threads.emplace_back(push_and_pull, k);
  absl::SleepFor(absl::Milliseconds(300));
  for (int k = kWorkers / 2; k < kWorkers; ++k) threads.emplace_back(push_and_pull, k);
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(versions, std::vector<uint64_t>(kWorkers, 2));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "the round waited for a pull to time out";
}

TEST(LocalSgd, AfterASyncRoundEveryWorkerHoldsTheAverageOfTheLocalModels) {
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 3, 4);
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const size_t d = server->Model().values->size();
  std::vector<std::unique_ptr<PsClient>> clients;
  for (int k = 0; k < 3; ++k) {
    clients.push_back(Connect(*server, "w" + std::to_string(k)));
    ASSERT_TRUE(clients.back()->Join().ok());
  }
  std::vector<float> x0(d);
  ASSERT_TRUE(clients[0]->Pull(0, absl::ZeroDuration(), absl::MakeSpan(x0)).ok());

  // Worker k's local model after its H steps is x0 + D_k, trained on n_k = 32 * H samples each.
  std::vector<std::vector<float>> local(3, x0);
  for (int k = 0; k < 3; ++k) {
    for (size_t i = 0; i < d; ++i)
      local[k][i] += 0.001f * static_cast<float>((i * (k + 1)) % 17) - 0.005f * k;
  }
  std::vector<std::vector<float>> pulled(3, std::vector<float>(d));
  std::vector<std::thread> threads;
  for (int k = 0; k < 3; ++k) {
    threads.emplace_back([&, k] {
      std::vector<float> delta(d);
      for (size_t i = 0; i < d; ++i) delta[i] = local[k][i] - x0[i];
      auto ack = clients[k]->Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 128, delta, 0.0);
      ASSERT_TRUE(ack.ok()) << ack.status();
      auto r = clients[k]->Pull(1, absl::Seconds(30), absl::MakeSpan(pulled[k]));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_TRUE(r->changed);
      EXPECT_EQ(r->version, 2u);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < d; ++i) {
    const double average = (double{local[0][i]} + local[1][i] + local[2][i]) / 3.0;
    ASSERT_NEAR(pulled[0][i], average, 1e-6) << "coordinate " << i;
    ASSERT_EQ(pulled[1][i], pulled[0][i]);
    ASSERT_EQ(pulled[2][i], pulled[0][i]);
  }
}

// Overlap-Local-SGD with two workers in sync rounds: every round still closes with both workers'
// updates, though each was computed while the previous round was in flight (a push in sync mode
// lasts until the other worker's update closes the round, so some steps end before it does), and
// the run learns about as well as the blocking one on the same data, on another path.
TEST(LocalSgd, OverlapWithTwoWorkersClosesEveryRoundAndLearnsLikeBlocking) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  struct Run {
    double accuracy = 0.0;
    std::vector<float> model;
  };
  auto run = [](bool overlap) {
    ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 4);
    options.training.set_epochs(4.0f);  // 4 * 2000 / (2 * 4 * 32): 32 rounds
    auto server = StartServer(options);
    EXPECT_NE(server, nullptr);
    TrainerOptions base;
    base.data.train_limit = 2000;
    base.data.test_limit = 500;
    base.overlap = overlap;
    const std::vector<TrainingResult> results = testing::TrainWorkers({server.get()}, 2, base);
    EXPECT_EQ(results.size(), 2u);
    for (const TrainingResult& r : results) {
      EXPECT_EQ(r.rounds, 32u) << "overlap " << overlap;
      if (overlap) {
        EXPECT_GT(r.steps_overlapped, 0u) << "no step ran behind a push";
      } else {
        EXPECT_EQ(r.steps_overlapped, 0u);
      }
    }
    const v1::StatusResponse status = server->GetStatus();
    EXPECT_EQ(status.rounds_closed_complete(), 32u) << "overlap " << overlap;
    EXPECT_EQ(status.version(), 33u);
    return Run{testing::EvaluateServerModel(*server, 500).accuracy, *server->Model().values};
  };
  const Run blocking = run(false), overlapped = run(true);
  EXPECT_GT(blocking.accuracy, 0.6);
  EXPECT_GT(overlapped.accuracy, blocking.accuracy - 0.05) << "blocking " << blocking.accuracy;
  EXPECT_NE(overlapped.model, blocking.model) << "overlap took the blocking path";
}

}  // namespace
}  // namespace ps
