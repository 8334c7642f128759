// The model split by key range over S real servers: workers split pushes and pulls by range and
// talk to all shards in parallel, and the result does not depend on S.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common/codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

// S servers for one model, shard i of S each.
std::vector<std::unique_ptr<ParameterServer>> StartShards(ServerOptions options, int count) {
  std::vector<std::unique_ptr<ParameterServer>> shards;
  for (int i = 0; i < count; ++i) {
    options.shard_index = i;
    options.shard_count = count;
    shards.push_back(testing::StartServer(options));
    if (shards.back() == nullptr) return {};
  }
  return shards;
}

std::vector<const ParameterServer*> Pointers(
    const std::vector<std::unique_ptr<ParameterServer>>& shards) {
  std::vector<const ParameterServer*> out;
  for (const auto& s : shards) out.push_back(s.get());
  return out;
}

// The whole model: every shard's part, in order.
std::vector<float> WholeModel(const std::vector<std::unique_ptr<ParameterServer>>& shards) {
  std::vector<float> whole;
  for (const auto& s : shards) {
    const std::vector<float>& part = *s->Model().values;
    whole.insert(whole.end(), part.begin(), part.end());
  }
  return whole;
}

TEST(Sharding, OneTwoAndThreeShardsTrainTheSameModel) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 4);
  options.training.set_rounds(40);
  std::vector<float> reference;
  for (int count : {1, 2, 3}) {
    auto shards = StartShards(options, count);
    ASSERT_EQ(shards.size(), static_cast<size_t>(count));
    std::vector<TrainingResult> results =
        testing::TrainWorkers(Pointers(shards), 2, /*train_limit=*/4000, /*test_limit=*/500);
    ASSERT_EQ(results.size(), 2u);
    // Every shard closed every round: 40 rounds, versions 1..41.
    for (const auto& s : shards) EXPECT_EQ(s->Model().version, 41u);
    const std::vector<float> whole = WholeModel(shards);
    for (const TrainingResult& r : results) EXPECT_EQ(r.final_model, whole);
    if (count == 1) {
      reference = whole;
      continue;
    }
    // Each coordinate's round average is computed the same way whatever shard holds it, and two
    // summands add the same in either order, so the models agree exactly; the tolerance only
    // allows for a different summation order with more workers.
    ASSERT_EQ(whole.size(), reference.size());
    float worst = 0.0f;
    for (size_t i = 0; i < whole.size(); ++i) {
      worst = std::max(worst, std::abs(whole[i] - reference[i]));
    }
    EXPECT_LE(worst, 1e-6f) << "S = " << count;
  }
}

// 4-bit updates and 4-bit pull deltas over two shards (each shard its own messages and residuals)
// against the same run in fp32. Sync, so that the result does not depend on timing.
TEST(Sharding, CompressedBothWaysOverTwoShardsLearnsLikeFp32) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 3, 8);
  options.training.add_allowed_encodings(v1::ENCODING_QSGD);
  options.training.set_epochs(2.0f);
  options.training.set_learning_rate(0.2f);
  double accuracy[2] = {0, 0};
  for (bool compressed : {false, true}) {
    if (compressed) {
      v1::EncodingParams* up = options.training.mutable_update_encoding();
      up->set_encoding(v1::ENCODING_QSGD);
      up->set_bits(4);
      up->set_bucket_size(512);
      up->set_scaling(v1::QUANT_SCALING_MAX_ABS);
      options.training.set_bits_policy(v1::BITS_POLICY_FIXED);
      options.training.set_error_feedback(true);
      *options.training.mutable_pull_encoding() = *up;
    }
    auto shards = StartShards(options, 2);
    ASSERT_EQ(shards.size(), 2u);
    std::vector<TrainingResult> results =
        testing::TrainWorkers(Pointers(shards), 3, /*train_limit=*/20000, /*test_limit=*/2000);
    ASSERT_EQ(results.size(), 3u);
    accuracy[compressed] = results[0].final_test.accuracy;
    if (compressed) {
      for (const TrainingResult& r : results) {
        EXPECT_GT(static_cast<double>(r.wire.raw_bytes_sent) / r.wire.bytes_sent, 5.0);
        EXPECT_GT(static_cast<double>(r.wire.raw_bytes_received) / r.wire.bytes_received, 4.0);
      }
    }
  }
  EXPECT_GE(accuracy[0], 0.75);  // 2 epochs of 20k images, 2k test images
  EXPECT_GE(accuracy[1], accuracy[0] - 0.015) << "fp32 " << accuracy[0];
  std::printf("fp32 %.4f, 4-bit both ways %.4f\n", accuracy[0], accuracy[1]);
}

TEST(Sharding, ShardsListedOutOfOrderAreRefused) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 1);
  auto shards = StartShards(options, 2);
  ASSERT_EQ(shards.size(), 2u);
  auto client = testing::ConnectShards({shards[1].get(), shards[0].get()});
  auto joined = client->Join();
  EXPECT_EQ(joined.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(joined.status().message()), HasSubstr("shard order"));
  // A refused join leaves no membership behind.
  for (const auto& s : shards) EXPECT_TRUE(s->GetStatus().members().empty());
  auto one = testing::ConnectShards({shards[0].get()});
  EXPECT_EQ(one->Join().status().code(), absl::StatusCode::kFailedPrecondition);
}

// Shards out of phase (after a partition, say): shard 1 closed a round without worker A, shard 0
// did not. A's update is then refused by shard 1 as exactly one round late and taken by shard 0;
// the session pushes it again on shard 1's current version, so that both open rounds get it
// (GrpcSession::RepushOneRoundLate), rather than leaving shard 1's round to its deadline.
TEST(Sharding, AnUpdateOneRoundLateOnOneShardIsPushedAgainThere) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 1);
  options.training.set_round_deadline_ms(300);
  auto shards = StartShards(options, 2);
  ASSERT_EQ(shards.size(), 2u);
  absl::StatusOr<ModelValues> initial = BuiltinInitialModel(options.training);
  ASSERT_TRUE(initial.ok()) << initial.status();
  std::unique_ptr<Session> a = testing::ConnectSession(Pointers(shards), "a");
  ASSERT_TRUE(a->Join(*initial).ok());
  // B, a plain client of both shards, pushes to shard 1 alone; its round closes at the deadline.
  auto b = testing::ConnectShards(Pointers(shards), "b");
  ASSERT_TRUE(b->Join(std::nullopt, &*initial).ok());
  v1::EncodingParams fp32;
  fp32.set_encoding(v1::ENCODING_FP32);
  std::string zeros;
  ASSERT_TRUE(EncodeInto(fp32, std::vector<float>(b->ranges()[1].size(), 0.0f), &zeros).ok());
  ASSERT_TRUE(b->PushShard(1, v1::UPDATE_KIND_MODEL_DELTA, 1, 32, fp32, zeros, 0.0).ok());
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (shards[1]->Model().version < 2 && absl::Now() < give_up)
    absl::SleepFor(absl::Milliseconds(20));
  ASSERT_EQ(shards[1]->Model().version, 2u);
  ASSERT_EQ(shards[0]->Model().version, 1u);

  // A holds version 1 of both shards: shard 1 refuses its update as one round late.
  std::vector<float> update(initial->values.size(), 0.01f);
  UpdateInfo info;
  info.sample_count = 32;
  absl::StatusOr<RoundResult> round = a->Push(update, info);
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->repushes, 1u);
  EXPECT_EQ(round->stale_refusals, 0u);
  EXPECT_EQ(a->counters().stale_repushes, 1u);
  // Both rounds A's update joined have closed (at their deadline, B being absent): shard 0's
  // round on version 1 and shard 1's on version 2.
  EXPECT_EQ(shards[0]->Model().version, 2u);
  EXPECT_EQ(shards[1]->Model().version, 3u);
  EXPECT_EQ(round->version, 2u);
  EXPECT_TRUE(a->Leave().ok());
}

}  // namespace
}  // namespace ps
