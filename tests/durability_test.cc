// Checkpoints through the real server: written at shutdown and on schedule, resumed from at start,
// corrupt ones skipped for the older one, incompatible ones refused. Leases through it: a worker
// the server is holding a call of is not dropped.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

class DurabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "ps_durability_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  ServerOptions Options(int k = 1) {
    ServerOptions o = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, k, 1);
    o.checkpoint_dir = dir_;
    return o;
  }

  // Joins (once per client) and pushes one update of `value` everywhere on the current version.
  void Push(ParameterServer* server, PsClient* client, float value) {
    if (client->worker_id() == 0) {
      ASSERT_TRUE(client->Join().ok());
    }
    // Values that vary, so that a quantized downlink cannot represent them exactly.
    std::vector<float> update(server->Model().values->size());
    for (size_t i = 0; i < update.size(); ++i) update[i] = value * static_cast<float>(i % 7 + 1);
    auto ack = client->Push(v1::UPDATE_KIND_MODEL_DELTA, server->Model().version, 1, update, 0.0);
    ASSERT_TRUE(ack.ok()) << ack.status();
  }

  std::string dir_;
};

TEST_F(DurabilityTest, ShutdownWritesACheckpointAndARestartResumesFromIt) {
  std::vector<float> model;
  {
    auto server = testing::StartServer(Options());
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    for (int i = 0; i < 3; ++i) Push(server.get(), client.get(), 0.25f * (i + 1));
    ASSERT_EQ(server->Model().version, 4u);
    model = *server->Model().values;
    server->Shutdown();
  }
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{4}));
  auto server = testing::StartServer(Options());
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->Model().version, 4u);
  EXPECT_EQ(*server->Model().values, model);
  const v1::StatusResponse status = server->GetStatus();
  EXPECT_EQ(status.resumed_from_version(), 4u);
  EXPECT_EQ(status.rounds_completed(), 3u);
  // Training goes on from there, with new worker ids.
  auto client = testing::Connect(*server);
  Push(server.get(), client.get(), 1.0f);
  EXPECT_EQ(server->Model().version, 5u);
}

TEST_F(DurabilityTest, CheckpointsAreWrittenEveryNVersionsAndOnlyTheLastTwoKept) {
  ServerOptions options = Options();
  options.checkpoint_every_versions = 2;  // due versions wake the checkpointer: no short timer
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  auto client = testing::Connect(*server);
  for (int i = 0; i < 6; ++i) {
    Push(server.get(), client.get(), 0.1f);
    const uint64_t version = server->Model().version;
    if (version % 2 == 1) {  // 3, 5, 7: a checkpoint is due
      for (int wait = 0; wait < 100 && server->GetStatus().checkpoint_version() < version; ++wait) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      EXPECT_EQ(server->GetStatus().checkpoint_version(), version);
    }
  }
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{7, 5}));
}

TEST_F(DurabilityTest, LeasesStatusAndPushesGoOnWhileACheckpointIsBeingWritten) {
  ServerOptions options = Options(2);
  options.training.set_mode(v1::AGGREGATION_MODE_ASYNC);
  options.lease = absl::Milliseconds(300);
  options.checkpoint_every_versions = 1;
  std::atomic<uint64_t> writing{0};
  std::atomic<bool> release{false};
  options.before_checkpoint_write_for_test = [&](uint64_t version) {
    writing = version;
    while (!release) absl::SleepFor(absl::Milliseconds(5));
  };
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  auto client = testing::Connect(*server);
  auto silent = testing::Connect(*server);
  ASSERT_TRUE(silent->Join().ok());
  Push(server.get(), client.get(), 0.5f);  // version 2: a checkpoint is due, and held
  for (int wait = 0; wait < 200 && writing == 0; ++wait) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(writing, 2u);
  // While it is held: the silent worker's lease expires, Status answers, pushes are applied.
  bool expired = false;
  for (int wait = 0; wait < 200 && !expired; ++wait) {
    absl::SleepFor(absl::Milliseconds(10));
    expired = server->GetStatus().members_size() == 1;
    ASSERT_TRUE(client->Heartbeat(nullptr).ok());
  }
  EXPECT_TRUE(expired) << "housekeeping waited for the checkpoint write";
  Push(server.get(), client.get(), 0.5f);
  EXPECT_EQ(server->Model().version, 3u);
  EXPECT_EQ(server->GetStatus().checkpoint_version(), 0u);
  release = true;
  for (int wait = 0; wait < 200 && server->GetStatus().checkpoint_version() < 3; ++wait) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(ListCheckpointVersions(dir_).front(), 3u) << "the version due meanwhile follows";
}

// A sync pull waits for the round longer than the lease while its worker sends nothing else (with
// 256 workers on 2 cores, heartbeats were seconds late): the worker must not be dropped under its
// own call, and the call's end renews its lease.
TEST(Leases, AWorkerWaitingOnAPullLongerThanItsLeaseStaysAMember) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 1);
  options.lease = absl::Milliseconds(400);  // housekeeping every 100 ms
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  auto waiting = testing::Connect(*server, "waiting");
  auto other = testing::Connect(*server, "other");
  ASSERT_TRUE(waiting->Join().ok());
  ASSERT_TRUE(other->Join().ok());
  const uint64_t n = server->GetStatus().model_size();
  const std::vector<float> delta(n, 0.0f);
  ASSERT_TRUE(waiting->Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 1, delta, 0.0).ok());
  std::vector<float> model(n);
  absl::StatusOr<PullResult> pulled;
  std::thread pull([&] { pulled = waiting->Pull(1, absl::Seconds(20), absl::MakeSpan(model)); });
  // Five leases: the other worker heartbeats, the waiting one only waits.
  for (int i = 0; i < 40; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(other->Heartbeat(nullptr).ok());
  }
  EXPECT_EQ(server->GetStatus().members_size(), 2) << "the waiting worker was dropped";
  ASSERT_TRUE(other->Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 1, delta, 0.0).ok());
  pull.join();
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->version, 2u);
  absl::SleepFor(absl::Milliseconds(200));  // half a lease after the pull's end
  EXPECT_TRUE(waiting->Heartbeat(nullptr).ok()) << "the pull's end did not renew the lease";
}

TEST_F(DurabilityTest, ACorruptNewestCheckpointIsSkippedForTheOlderOne) {
  std::vector<float> older_model;
  {
    auto server = testing::StartServer(Options());
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    Push(server.get(), client.get(), 0.5f);
    ASSERT_TRUE(server->Checkpoint().ok());  // version 2
    older_model = *server->Model().values;
    Push(server.get(), client.get(), 0.5f);
    server->Shutdown();  // version 3
  }
  ASSERT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{3, 2}));
  {
    std::fstream f(CheckpointPath(dir_, 3), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x5a');
  }
  auto server = testing::StartServer(Options());
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->Model().version, 2u);
  EXPECT_EQ(*server->Model().values, older_model);
}

TEST_F(DurabilityTest, OnlyCorruptCheckpointsStopTheServerFromStarting) {
  {
    auto server = testing::StartServer(Options());
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    Push(server.get(), client.get(), 0.5f);
    server->Shutdown();
  }
  std::filesystem::resize_file(CheckpointPath(dir_, 2), 100);
  auto server = ParameterServer::Create(Options());
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr(CheckpointPath(dir_, 2)));
}

TEST_F(DurabilityTest, ACheckpointOfAnotherModelIsRefused) {
  {
    auto server = testing::StartServer(Options());
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    Push(server.get(), client.get(), 0.5f);
  }
  ServerOptions other = Options();
  other.training.set_model("mlp");
  other.training.set_hidden_units(16);
  auto server = ParameterServer::Create(other);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("model = softmax"));
}

TEST_F(DurabilityTest, ShutdownClosesTheOpenRoundWithTheMinimumQuorum) {
  auto server = testing::StartServer(Options(/*k=*/2));
  ASSERT_NE(server, nullptr);
  auto a = testing::Connect(*server, "a");
  auto b = testing::Connect(*server, "b");
  ASSERT_TRUE(b->Join().ok());
  Push(server.get(), a.get(), 0.5f);
  ASSERT_EQ(server->Model().version, 1u) << "the round waits for b";
  server->Shutdown();
  EXPECT_EQ(server->Model().version, 2u);
  EXPECT_EQ(ListCheckpointVersions(dir_), (std::vector<uint64_t>{2}));
}

TEST_F(DurabilityTest, ACompressedDownlinkResumesWithItsBroadcastModel) {
  ServerOptions options = Options();
  options.training.mutable_pull_encoding()->set_encoding(v1::ENCODING_QSGD);
  options.training.mutable_pull_encoding()->set_bits(4);
  options.training.mutable_pull_encoding()->set_bucket_size(512);
  options.training.mutable_pull_encoding()->set_scaling(v1::QUANT_SCALING_MAX_ABS);
  std::vector<float> broadcast, truth;
  {
    auto server = testing::StartServer(options);
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    Push(server.get(), client.get(), 0.3f);
    Push(server.get(), client.get(), -0.1f);
    broadcast = *server->Model().values;
    truth = *server->TrueModel();
    ASSERT_NE(broadcast, truth);
  }
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(*server->Model().values, broadcast);
  EXPECT_EQ(*server->TrueModel(), truth);
}

// The outer optimizer's momentum lives in checkpoints: a server that restarts from one makes
// exactly the next version an undisturbed server makes from the same update, and one that lost
// the momentum does not.
TEST_F(DurabilityTest, AResumedOuterOptimizerMakesTheSameNextVersionBitForBit) {
  ServerOptions options = Options();
  options.outer = DefaultOuterOptions("nesterov");
  options.checkpoint_every_versions = 1;
  auto undisturbed = testing::StartServer(options);
  ASSERT_NE(undisturbed, nullptr);
  auto client = testing::Connect(*undisturbed);
  Push(undisturbed.get(), client.get(), 0.25f);
  Push(undisturbed.get(), client.get(), -0.125f);
  ASSERT_EQ(undisturbed->Model().version, 3u);
  ASSERT_TRUE(undisturbed->Checkpoint().ok());
  // What a kill -9 leaves: the checkpoint directory, copied while the server runs on.
  const std::string copy = dir_ + "_copy";
  std::filesystem::remove_all(copy);
  std::filesystem::copy(dir_, copy);
  ServerOptions resumed_options = options;
  resumed_options.checkpoint_dir = copy;
  auto resumed = testing::StartServer(resumed_options);
  ASSERT_NE(resumed, nullptr);
  ASSERT_EQ(resumed->Model().version, 3u);
  ASSERT_EQ(*resumed->Model().values, *undisturbed->Model().values);

  auto other = testing::Connect(*resumed);
  std::vector<float> plain = *resumed->Model().values;
  Push(undisturbed.get(), client.get(), 0.5f);
  Push(resumed.get(), other.get(), 0.5f);
  EXPECT_EQ(resumed->Model().version, 4u);
  EXPECT_EQ(*resumed->Model().values, *undisturbed->Model().values) << "momentum restored";
  // Plain averaging would have added the update itself (K = 1): the momentum made a difference.
  for (size_t i = 0; i < plain.size(); ++i) plain[i] += 0.5f * static_cast<float>(i % 7 + 1);
  EXPECT_NE(*resumed->Model().values, plain);
  resumed.reset();
  std::filesystem::remove_all(copy);
}

TEST_F(DurabilityTest, ACheckpointOfAnotherOuterOptimizerIsRefused) {
  {
    ServerOptions options = Options();
    options.outer = DefaultOuterOptions("nesterov");
    auto server = testing::StartServer(options);
    ASSERT_NE(server, nullptr);
    auto client = testing::Connect(*server);
    Push(server.get(), client.get(), 0.5f);
  }
  auto server = ParameterServer::Create(Options());  // plain averaging
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("--outer_optimizer=sgd"));
}

}  // namespace
}  // namespace ps
