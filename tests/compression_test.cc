// Quantized messages both ways through a real server: the compressed pull leaves every worker with
// the server's broadcast model bit for bit, and training with quantized updates keeps its accuracy.
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/codec.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using testing::Connect;
using testing::SmallServerOptions;
using testing::StartServer;

v1::EncodingParams Qsgd(uint32_t bits) {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_QSGD);
  p.set_bits(bits);
  p.set_bucket_size(512);
  p.set_scaling(v1::QUANT_SCALING_MAX_ABS);
  return p;
}

class CompressedPull : public ::testing::TestWithParam<v1::BitsPolicy> {};

TEST_P(CompressedPull, EveryWorkerEndsOnTheBroadcastModelBitForBit) {
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_ASYNC, 3, 1);
  *options.training.mutable_pull_encoding() = Qsgd(3);
  options.training.set_pull_bits_policy(GetParam());
  options.training.set_min_bits(2);
  options.training.set_max_bits(8);
  options.training.set_dq_beta(4.0f);
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const size_t d = server->Model().values->size();
  std::vector<std::unique_ptr<PsClient>> clients;
  std::vector<std::vector<float>> held(3, std::vector<float>(d));
  std::vector<uint64_t> version(3, 0);
  for (int k = 0; k < 3; ++k) {
    clients.push_back(Connect(*server, "w" + std::to_string(k)));
    ASSERT_TRUE(clients[k]->Join().ok());
    auto r = clients[k]->Pull(0, absl::ZeroDuration(), absl::MakeSpan(held[k]));
    ASSERT_TRUE(r.ok()) << r.status();
    version[k] = r->version;
  }
  // Worker 0 pushes every step and pulls every step (one delta), worker 1 pulls every third step
  // (a chain of deltas), worker 2 only at the end (more than the chain holds: the full model).
  for (int step = 1; step <= 30; ++step) {
    // Sizes that vary from step to step, so that DQ-SGD picks varying bits.
    std::vector<float> delta(d);
    const float scale = 1e-3f * static_cast<float>(1 << (step % 4));
    for (size_t i = 0; i < d; ++i) delta[i] = scale * (static_cast<float>((i * step) % 13) - 6);
    ASSERT_TRUE(clients[0]->Push(v1::UPDATE_KIND_MODEL_DELTA, version[0], 32, delta, 0.0).ok());
    for (int k : {0, 1}) {
      if (k == 1 && step % 3 != 0) continue;
      auto r = clients[k]->Pull(version[k], absl::Seconds(10), absl::MakeSpan(held[k]));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->changed);
      version[k] = r->version;
      ASSERT_EQ(held[k], *server->Model().values) << "worker " << k << " at version " << r->version;
    }
  }
  auto r = clients[2]->Pull(version[2], absl::Seconds(10), absl::MakeSpan(held[2]));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(held[2], *server->Model().values);
  EXPECT_NE(*server->TrueModel(), *server->Model().values) << "3-bit deltas are lossy";
  // Workers 0 and 1 got quantized deltas: far fewer bytes than a full model per pull.
  EXPECT_LT(clients[0]->wire().payload_bytes_received * 4, clients[0]->wire().raw_bytes_received);
  const double mean_bits = server->GetStatus().mean_pull_bits();
  if (GetParam() == v1::BITS_POLICY_FIXED) {
    EXPECT_EQ(mean_bits, 3.0);
  } else {
    EXPECT_GT(mean_bits, 2.0);
    EXPECT_LT(mean_bits, 8.0);
    EXPECT_NE(mean_bits, std::round(mean_bits)) << "DQ-SGD chose different bits for the deltas";
  }
}

INSTANTIATE_TEST_SUITE_P(BitsPolicies, CompressedPull,
                         ::testing::Values(v1::BITS_POLICY_FIXED, v1::BITS_POLICY_DQSGD),
                         [](const auto& info) {
                           return info.param == v1::BITS_POLICY_FIXED ? "FixedBits" : "DqSgdBits";
                         });

struct Outcome {
  double accuracy = 0;    // the server's final model on the test subset
  uint64_t uplink = 0;    // bytes the server received
  uint64_t downlink = 0;  // bytes the server sent
};

Outcome Train(const v1::EncodingParams& update, v1::BitsPolicy policy,
              const v1::EncodingParams& pull) {
  ServerOptions options = SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 3, 8);
  options.training.set_epochs(4.0f);
  options.training.set_learning_rate(0.2f);
  options.training.set_lr_schedule(v1::LEARNING_RATE_SCHEDULE_COSINE);
  *options.training.mutable_update_encoding() = update;
  options.training.add_allowed_encodings(v1::ENCODING_QSGD);
  options.training.set_bits_policy(policy);
  options.training.set_min_bits(2);
  options.training.set_max_bits(8);
  options.training.set_dq_beta(4.0f);
  options.training.set_dq_alpha(1.0f);
  options.training.set_error_feedback(true);
  *options.training.mutable_pull_encoding() = pull;
  auto server = StartServer(options);
  Outcome outcome;
  if (server == nullptr) return outcome;
  EXPECT_EQ(testing::TrainWorkers(*server, 3, 20000, 2000).size(), 3u);
  outcome.accuracy = testing::EvaluateServerModel(*server, 2000).accuracy;
  const v1::StatusResponse status = server->GetStatus();
  outcome.uplink = status.wire().bytes_received();
  outcome.downlink = status.wire().bytes_sent();
  std::printf("%s up, %s down: accuracy %.4f, uplink %.2f MB, downlink %.2f MB\n",
              EncodingName(update).c_str(), EncodingName(pull).c_str(), outcome.accuracy,
              outcome.uplink / 1e6, outcome.downlink / 1e6);
  return outcome;
}

v1::EncodingParams Fp32() {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_FP32);
  return p;
}

TEST(CompressedTraining, FourBitsBothWaysEndsWithinOnePointOfFp32) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const Outcome fp32 = Train(Fp32(), v1::BITS_POLICY_FIXED, Fp32());
  const Outcome four = Train(Qsgd(4), v1::BITS_POLICY_FIXED, Qsgd(4));
  EXPECT_GE(fp32.accuracy, 0.80);
  EXPECT_GE(four.accuracy, fp32.accuracy - 0.01);
  // 4 bits + a scale per 512 coordinates against 32 bits, both ways (plus message headers).
  EXPECT_LT(four.uplink * 6, fp32.uplink);
  EXPECT_LT(four.downlink * 6, fp32.downlink);
}

TEST(CompressedTraining, DqSgdSendsFewerBitsThanEightBitsWithinHalfAPoint) {
  if (!testing::FashionMnistInstalled()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const Outcome eight = Train(Qsgd(8), v1::BITS_POLICY_FIXED, Fp32());
  const Outcome dynamic = Train(Qsgd(8), v1::BITS_POLICY_DQSGD, Fp32());
  EXPECT_LT(dynamic.uplink, eight.uplink);
  EXPECT_GE(dynamic.accuracy, eight.accuracy - 0.005);
}

}  // namespace
}  // namespace ps
