// A model far larger than gRPC's 4 MiB message limit travels in chunks, both ways, bit for bit.
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

TEST(LargeModel, FiveMillionFloatsPushAndPullExactly) {
  // Softmax with 499999 inputs and 10 classes: 10 * 499999 + 10 = 5,000,000 parameters (20 MB).
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_ASYNC, 1, 1);
  options.training.set_input_dim(499999);
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  auto client = testing::Connect(*server);
  auto joined = client->Join();
  ASSERT_TRUE(joined.ok()) << joined.status();
  ASSERT_EQ(joined->model_size(), 5000000u);

  std::vector<float> x0(5000000);
  auto first = client->Pull(0, absl::ZeroDuration(), absl::MakeSpan(x0));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->version, 1u);
  EXPECT_EQ(x0, *server->Model().values);

  std::vector<float> delta(x0.size());
  for (size_t i = 0; i < delta.size(); ++i) delta[i] = static_cast<float>(i % 1000) * 1e-3f;
  auto ack = client->Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 32, delta, 0.0);
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->version(), 2u);

  std::vector<float> x1(x0.size());
  auto second = client->Pull(1, absl::Seconds(10), absl::MakeSpan(x1));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->version, 2u);
  // K = 1, fresh update: x1 = x0 + 1 * delta exactly.
  size_t wrong = 0;
  for (size_t i = 0; i < x1.size(); ++i) wrong += x1[i] != x0[i] + delta[i];
  EXPECT_EQ(wrong, 0u);
  // 20 MB each way, in chunks of at most 1 MiB plus framing.
  EXPECT_GT(client->wire().bytes_sent, 20000000u);
  EXPECT_GT(client->wire().bytes_received, 40000000u);
}

}  // namespace
}  // namespace ps
