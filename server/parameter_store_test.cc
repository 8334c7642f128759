#include "server/parameter_store.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/codec.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

TEST(ParameterStore, ApplyPublishesANewVersionAndOldSnapshotsStayIntact) {
  std::vector<uint64_t> published;
  ParameterStore store({1.0f, 2.0f}, {}, [&](uint64_t v) { published.push_back(v); });
  const ModelSnapshot before = store.Snapshot();
  EXPECT_EQ(before.version, 1u);
  const uint64_t v = store.Apply([](absl::Span<float> m) { m[0] += 10.0f; });
  EXPECT_EQ(v, 2u);
  EXPECT_EQ(published, (std::vector<uint64_t>{2}));
  EXPECT_EQ(*before.values, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(*store.Snapshot().values, (std::vector<float>{11.0f, 2.0f}));
  EXPECT_TRUE(store.Snapshot().deltas.empty());
  EXPECT_EQ(store.TrueModel(), store.Snapshot().values);
}

StoreOptions FourBitDownlink() {
  StoreOptions o;
  o.downlink.set_encoding(v1::ENCODING_QSGD);
  o.downlink.set_bits(4);
  o.downlink.set_bucket_size(64);
  o.downlink.set_scaling(v1::QUANT_SCALING_MAX_ABS);
  o.max_delta_chain = 3;
  return o;
}

// docs/algorithms.md section 9: whoever starts from the broadcast model of some version and applies
// the published deltas in order holds exactly the server's broadcast model, bit for bit.
TEST(ParameterStore, ApplyingTheDeltaChainReproducesTheBroadcastModelBitForBit) {
  const size_t d = 1000;
  std::vector<float> initial(d);
  for (size_t i = 0; i < d; ++i) initial[i] = std::sin(static_cast<float>(i));
  ParameterStore store(initial, FourBitDownlink());
  std::vector<float> worker = *store.Snapshot().values;  // a worker that pulled version 1
  uint64_t worker_version = 1;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (int step = 0; step < 20; ++step) {
    store.Apply([&](absl::Span<float> m) {
      for (float& x : m) x += normal(rng);
    });
    const ModelSnapshot s = store.Snapshot();
    ASSERT_LE(s.deltas.size(), 3u);
    ASSERT_EQ(s.deltas.back().version, s.version);
    if (step % 3 != 0) continue;  // this worker pulls every third version: a chain of 3
    for (const DownlinkDelta& delta : s.deltas) {
      if (delta.base_version < worker_version) continue;
      ASSERT_EQ(delta.base_version, worker_version) << "the chain has a gap";
      ASSERT_TRUE(
          DecodeAccumulate(delta.encoding, *delta.payload, 1.0f, absl::MakeSpan(worker)).ok());
      worker_version = delta.version;
    }
    ASSERT_EQ(worker_version, s.version);
    ASSERT_EQ(worker, *s.values) << "version " << s.version;
  }
  // The residual x - x_b is carried forward: the broadcast model tracks the true one closely.
  const std::vector<float>& x = *store.TrueModel();
  const std::vector<float>& xb = *store.Snapshot().values;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < d; ++i) {
    diff += (x[i] - xb[i]) * (x[i] - xb[i]);
    norm += x[i] * x[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 0.05);
  EXPECT_NE(x, xb) << "4 bits cannot be lossless here";
}

TEST(ParameterStore, DqSgdDownlinkDeltasTakeTheirBitsFromTheirNorm) {
  StoreOptions options = FourBitDownlink();
  DqSgdOptions dq;  // bucket 64: c = 16, beta = 4
  dq.variance_constant = 16;
  options.downlink_dqsgd = dq;
  ParameterStore store(std::vector<float>(256, 0.0f), options);
  // A constant change is exactly representable, so each delta is the change itself (no residual).
  auto step = [&](float c) {
    store.Apply([&](absl::Span<float> m) {
      for (float& x : m) x += c;
    });
    return store.Snapshot().deltas.back().encoding.bits();
  };
  for (int i = 0; i < 5; ++i) {
    // The first five set the reference norm; ratio 1: s = ceil(sqrt(16 / 4)) = 2, 3 bits.
    EXPECT_EQ(step(1.0f), 3u);
  }
  EXPECT_EQ(step(8.0f), 6u) << "ratio 8: s = ceil(sqrt(16 * 64 / 4)) = 16, 1 + ceil(log2 17)";
  EXPECT_EQ(step(0.25f), 2u) << "ratio 1/4: s = ceil(sqrt(16 / 16 / 4)) = 1";
  EXPECT_DOUBLE_EQ(store.mean_downlink_bits(), (5 * 3 + 6 + 2) / 7.0);
  EXPECT_EQ(*store.Snapshot().values, *store.TrueModel()) << "no residual was left behind";
}

}  // namespace
}  // namespace ps
