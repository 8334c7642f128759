#include "server/aggregator.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "common/codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

v1::EncodingParams Fp32Params() {
  v1::EncodingParams p;
  p.set_encoding(v1::ENCODING_FP32);
  return p;
}

// Raw bytes, not Encode: the tests also need payloads that the encoder would refuse.
std::string Fp32Payload(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

class AggregatorTest : public ::testing::Test {
 protected:
  void Build(v1::AggregationMode mode, std::vector<float> initial, int k,
             v1::UpdateKind kind = v1::UPDATE_KIND_MODEL_DELTA,
             const std::function<void(AggregatorOptions*)>& customize = nullptr) {
    store_ = std::make_unique<ParameterStore>(std::move(initial));
    membership_ = std::make_unique<Membership>(k, absl::Seconds(30), &clock_);
    AggregatorOptions options;
    options.mode = mode;
    options.update_kind = kind;
    options.num_workers = k;
    options.staleness_exponent = 0.5;
    options.max_staleness = 4.0;
    options.server_step.base = 0.5f;
    options.clock = &clock_;
    if (customize) customize(&options);
    aggregator_ = std::make_unique<Aggregator>(options, store_.get(), membership_.get());
    for (int i = 0; i < k; ++i) ids_.push_back(membership_->Join("w", -1)->id);
  }

  absl::StatusOr<SubmitResult> Push(uint64_t worker, uint64_t base, uint64_t samples,
                                    const std::vector<float>& values,
                                    v1::UpdateKind kind = v1::UPDATE_KIND_MODEL_DELTA) {
    return aggregator_->Submit(MakeUpdate(worker, base, samples, values, kind));
  }

  // The payload lives in payloads_ (a deque: it does not move), so the update may be submitted
  // from another thread.
  Update MakeUpdate(uint64_t worker, uint64_t base, uint64_t samples,
                    const std::vector<float>& values,
                    v1::UpdateKind kind = v1::UPDATE_KIND_MODEL_DELTA) {
    payloads_.push_back(Fp32Payload(values));
    Update u;
    u.worker_id = worker;
    u.sequence = ++sequence_[worker];
    u.kind = kind;
    u.base_version = base;
    u.sample_count = samples;
    u.encoding = Fp32Params();
    u.payload = payloads_.back();
    return u;
  }

  std::vector<float> Model() const { return *store_->Snapshot().values; }

  // Async group commit, made deterministic: `blocker` leads a batch of its own and holds it (with
  // no lock held) until each of `queued` has queued behind it, in order; they then go as one
  // batch. Returns the results of `queued`.
  std::vector<absl::StatusOr<SubmitResult>> PushAsOneBatch(const Update& blocker,
                                                           const std::vector<Update>& queued) {
    gate_armed_ = true;
    std::vector<absl::StatusOr<SubmitResult>> results(queued.size(), absl::UnknownError("unset"));
    std::vector<std::thread> threads;
    threads.emplace_back([&] { EXPECT_TRUE(aggregator_->Submit(blocker).ok()); });
    while (gate_armed_) absl::SleepFor(absl::Milliseconds(1));  // the blocker leads
    for (size_t i = 0; i < queued.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = aggregator_->Submit(queued[i]); });
      while (aggregator_->queued_updates() < i + 2) absl::SleepFor(absl::Milliseconds(1));
    }
    gate_open_ = true;
    for (std::thread& t : threads) t.join();
    return results;
  }

  // For AggregatorOptions::on_batch_for_test.
  void Gate(size_t) {
    if (!gate_armed_.exchange(false)) return;
    while (!gate_open_) absl::SleepFor(absl::Milliseconds(1));
  }

  FakeClock clock_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<Aggregator> aggregator_;
  std::vector<uint64_t> ids_;
  std::map<uint64_t, uint64_t> sequence_;
  std::deque<std::string> payloads_;
  std::atomic<bool> gate_armed_{false};
  std::atomic<bool> gate_open_{false};
};

TEST(StalenessWeight, IsOneUpToOneRoundThenDecaysAsAPower) {
  EXPECT_DOUBLE_EQ(StalenessWeight(0.0, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(1.0, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(4.0, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(StalenessWeight(9.0, 0.5), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(StalenessWeight(9.0, 0.0), 1.0);
}

TEST_F(AggregatorTest, SyncRoundAppliesTheSampleWeightedAverageWhenTheLastWorkerPushes) {
  Build(v1::AGGREGATION_MODE_SYNC, {1.0f, 2.0f}, 2);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f, 0.0f}).ok());
  EXPECT_EQ(store_->version(), 1u) << "the round must wait for the second worker";
  auto r = Push(ids_[1], 1, 3, {0.0f, 4.0f});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 2u);
  // x + (1*[2,0] + 3*[0,4]) / 4 = [1 + 0.5, 2 + 3]
  EXPECT_EQ(Model(), (std::vector<float>{1.5f, 5.0f}));
  EXPECT_EQ(aggregator_->stats().rounds_completed, 1u);
}

TEST_F(AggregatorTest, SyncGradientRoundStepsAgainstTheAverageGradient) {
  Build(v1::AGGREGATION_MODE_SYNC, {1.0f}, 2, v1::UPDATE_KIND_GRADIENT);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f}, v1::UPDATE_KIND_GRADIENT).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {4.0f}, v1::UPDATE_KIND_GRADIENT).ok());
  EXPECT_EQ(Model(), (std::vector<float>{1.0f - 0.5f * 3.0f}));
}

TEST_F(AggregatorTest, SyncGradientStepsFollowTheServersScheduleOneStepPerRound) {
  // Cosine over 4 steps from 0.5: steps 0, 1, 2 take 0.5, 0.5 (1 + cos(pi/4)) / 2, 0.25.
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 2, v1::UPDATE_KIND_GRADIENT, [](AggregatorOptions* o) {
    o->server_step = StepSchedule{v1::LEARNING_RATE_SCHEDULE_COSINE, 0.5f, 0.0f, 4};
  });
  float expected = 0.0f;
  for (uint64_t step = 0; step < 3; ++step) {
    ASSERT_TRUE(Push(ids_[0], step + 1, 1, {1.0f}, v1::UPDATE_KIND_GRADIENT).ok());
    ASSERT_TRUE(Push(ids_[1], step + 1, 1, {1.0f}, v1::UPDATE_KIND_GRADIENT).ok());
    expected -= static_cast<float>(0.25 * (1 + std::cos(M_PI * step / 4)));
    EXPECT_NEAR(Model()[0], expected, 1e-6) << "after step " << step;
  }
}

TEST_F(AggregatorTest, AsyncGradientStepsCountRoundsOfKUpdates) {
  // K = 2, inverse_time decay 1 per round from 0.5: updates 1 and 2 (versions 1, 2: t = 0, 0.5)
  // step with 0.5 and 0.5 / 1.5.
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 2, v1::UPDATE_KIND_GRADIENT, [](AggregatorOptions* o) {
    o->server_step = StepSchedule{v1::LEARNING_RATE_SCHEDULE_INVERSE_TIME, 0.5f, 1.0f, 0};
  });
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}, v1::UPDATE_KIND_GRADIENT).ok());
  EXPECT_FLOAT_EQ(Model()[0], -0.5f);
  ASSERT_TRUE(Push(ids_[1], 2, 1, {1.0f}, v1::UPDATE_KIND_GRADIENT).ok());
  EXPECT_FLOAT_EQ(Model()[0], -0.5f - 0.5f / 1.5f);
}

TEST_F(AggregatorTest, SyncRoundWithOneWorkerReproducesItsUpdateBitForBit) {
  const float x = 0.1f, d = 1e-7f + 0.3f;
  Build(v1::AGGREGATION_MODE_SYNC, {x}, 1);
  ASSERT_TRUE(Push(ids_[0], 1, 7, {d}).ok());
  EXPECT_EQ(Model()[0], x + d);
}

TEST_F(AggregatorTest, SyncRoundClosesWhenTheMissingWorkerLeaves) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {3.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {6.0f}).ok());
  EXPECT_EQ(store_->version(), 1u);
  ASSERT_TRUE(membership_->Leave(ids_[2]).ok());
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 2u);
  EXPECT_EQ(Model(), (std::vector<float>{4.5f}));
}

TEST_F(AggregatorTest, SyncRefusesAStaleUpdateNamingBothVersions) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 1);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  auto r = Push(ids_[0], 1, 1, {1.0f});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("built on version 1"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("current version is 2"));
  EXPECT_EQ(Model(), (std::vector<float>{1.0f}));
  EXPECT_EQ(aggregator_->stats().refused_stale, 1u);
}

TEST_F(AggregatorTest, SyncRefusesASecondUpdateForTheSameRound) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 2);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  EXPECT_EQ(Push(ids_[0], 1, 1, {1.0f}).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(AggregatorTest, ARetriedSequenceNumberIsADuplicateAndNotAppliedTwice) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 1);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  --sequence_[ids_[0]];  // the same sequence number again
  auto r = Push(ids_[0], 2, 1, {1.0f});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->duplicate);
  EXPECT_EQ(Model(), (std::vector<float>{1.0f}));
  EXPECT_EQ(store_->version(), 2u);
}

TEST_F(AggregatorTest, AMalformedUpdateLeavesTheRoundUntouched) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f, 0.0f}, 2);
  auto bad = Push(ids_[0], 1, 1, {1.0f, std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f, 2.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {4.0f, 4.0f}).ok());
  EXPECT_EQ(Model(), (std::vector<float>{3.0f, 3.0f}));
}

TEST_F(AggregatorTest, AnUnknownWorkerIsNotFound) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 1);
  EXPECT_EQ(Push(999, 1, 1, {1.0f}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->version(), 1u);
}

TEST_F(AggregatorTest, ABaseVersionFromTheFutureIsInvalid) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 1);
  EXPECT_EQ(Push(ids_[0], 5, 1, {1.0f}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AggregatorTest, AsyncWeightsEachUpdateByStalenessOverK) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 2);
  // Fresh update: tau = 0, s = 1, weight 1/K = 1/2.
  ASSERT_TRUE(Push(ids_[0], 1, 1, {4.0f}).ok());
  EXPECT_EQ(Model(), (std::vector<float>{2.0f}));
  EXPECT_EQ(store_->version(), 2u);
  // Five more fresh ones from worker 0 take the version to 7.
  for (uint64_t v = 2; v < 7; ++v) ASSERT_TRUE(Push(ids_[0], v, 1, {0.0f}).ok());
  ASSERT_EQ(store_->version(), 7u);
  // Worker 1 built on version 1: tau = (7 - 1) / 2 = 3 rounds, s = 3^-0.5, weight s/2.
  ASSERT_TRUE(Push(ids_[1], 1, 1, {2.0f}).ok());
  EXPECT_NEAR(Model()[0], 2.0 + 2.0 * std::pow(3.0, -0.5) / 2.0, 1e-6);
}

TEST_F(AggregatorTest, AsyncUpdatesThatQueuedUpAreAppliedAsOneBatchEachWithItsOwnWeight) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 4, v1::UPDATE_KIND_MODEL_DELTA,
        [this](AggregatorOptions* o) { o->on_batch_for_test = [this](size_t n) { Gate(n); }; });
  for (uint64_t v = 1; v < 8; ++v) ASSERT_TRUE(Push(ids_[0], v, 1, {0.0f}).ok());
  ASSERT_EQ(store_->version(), 8u);
  const Update blocker = MakeUpdate(ids_[0], 8, 1, {0.0f});
  const std::vector<Update> queued = {MakeUpdate(ids_[1], 8, 1, {4.0f}),
                                      MakeUpdate(ids_[2], 1, 1, {4.0f}),
                                      MakeUpdate(ids_[3], 1, 1, {4.0f})};
  const auto results = PushAsOneBatch(blocker, queued);
  // Each one is weighted as if applied alone, at the version it takes: 9, 10, 11 (K = 4).
  // tau = (9 - 8) / 4 = 0.25: s = 1; tau = (10 - 1) / 4: s = 2.25^-0.5; tau = 10 / 4: 2.5^-0.5.
  const double expected = 4.0 / 4 + 4.0 * std::pow(2.25, -0.5) / 4 + 4.0 * std::pow(2.5, -0.5) / 4;
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->version, 12u) << "a batch publishes its last version";
  }
  EXPECT_NEAR(Model()[0], expected, 1e-6);
  EXPECT_EQ(store_->version(), 12u) << "a batch of n advances the version by n";
  const AggregatorStats stats = aggregator_->stats();
  EXPECT_EQ(stats.batches, 9u);  // 7 alone, the blocker, the three together
  EXPECT_EQ(stats.largest_batch, 3u);
  EXPECT_EQ(stats.applied, 11u);
}

TEST_F(AggregatorTest, AnUpdateThatWouldOverflowIsRefusedAloneAndTheRestOfItsBatchApplied) {
  Build(v1::AGGREGATION_MODE_ASYNC, {1.5e38f, 0.0f}, 4, v1::UPDATE_KIND_MODEL_DELTA,
        [this](AggregatorOptions* o) { o->on_batch_for_test = [this](size_t n) { Gate(n); }; });
  const Update blocker = MakeUpdate(ids_[0], 1, 1, {0.0f, 0.0f});
  // 1.5e38 + 1e38 / 4 is past the largest magnitude a coordinate may have (half float's range).
  const std::vector<Update> queued = {MakeUpdate(ids_[1], 1, 1, {0.0f, -4.0f}),
                                      MakeUpdate(ids_[2], 1, 1, {1e38f, 0.0f}),
                                      MakeUpdate(ids_[3], 1, 1, {0.0f, 8.0f})};
  const auto results = PushAsOneBatch(blocker, queued);
  ASSERT_TRUE(results[0].ok()) << results[0].status();
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(results[1].status().message(), HasSubstr("coordinate 0"));
  ASSERT_TRUE(results[2].ok()) << results[2].status();
  EXPECT_EQ(Model(), (std::vector<float>{1.5e38f, 1.0f}));
  EXPECT_EQ(store_->version(), 4u) << "the refused update costs no version";
  EXPECT_EQ(aggregator_->stats().refused_invalid, 1u);
}

TEST_F(AggregatorTest, AsyncRefusesAnUpdateOlderThanMaxStaleness) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 2);
  for (uint64_t v = 1; v < 11; ++v) ASSERT_TRUE(Push(ids_[0], v, 1, {1.0f}).ok());
  ASSERT_EQ(store_->version(), 11u);
  const std::vector<float> before = Model();
  // tau = (11 - 1) / 2 = 5 > 4.
  auto r = Push(ids_[1], 1, 1, {1.0f});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("built on version 1"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("current version is 11"));
  EXPECT_EQ(Model(), before);
  EXPECT_EQ(store_->version(), 11u);
  // tau = (11 - 3) / 2 = 4 is still accepted, weighted 4^-0.5 / 2 = 1/4.
  ASSERT_TRUE(Push(ids_[1], 3, 1, {1.0f}).ok());
  EXPECT_FLOAT_EQ(Model()[0], before[0] + 0.25f);
}

TEST_F(AggregatorTest, AsyncGradientStepsWithTheServerLearningRate) {
  Build(v1::AGGREGATION_MODE_ASYNC, {1.0f}, 1, v1::UPDATE_KIND_GRADIENT);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f}, v1::UPDATE_KIND_GRADIENT).ok());
  EXPECT_EQ(Model(), (std::vector<float>{0.0f}));
}

TEST_F(AggregatorTest, AnUpdateOfTheWrongKindIsInvalid) {
  Build(v1::AGGREGATION_MODE_ASYNC, {1.0f}, 1);
  EXPECT_EQ(Push(ids_[0], 1, 1, {2.0f}, v1::UPDATE_KIND_GRADIENT).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AggregatorTest, BackupWorkersCloseTheRoundAtTheFirstNUpdates) {
  // K = 4 with b = 1: the first 3 updates close the round; the fourth is late and dropped.
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 4, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) { o->backup_workers = 1; });
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {2.0f}).ok());
  EXPECT_EQ(store_->version(), 1u);
  ASSERT_TRUE(Push(ids_[2], 1, 1, {3.0f}).ok());
  EXPECT_EQ(store_->version(), 2u);
  EXPECT_EQ(Model(), (std::vector<float>{2.0f}));
  auto late = Push(ids_[3], 1, 1, {100.0f});
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Model(), (std::vector<float>{2.0f}));
  const AggregatorStats stats = aggregator_->stats();
  EXPECT_EQ(stats.rounds_closed_by_quorum, 1u);
  EXPECT_EQ(stats.late_dropped, 1u);
}

TEST_F(AggregatorTest, WithFewerLiveWorkersThanTheQuorumTheRoundWaitsForAllOfThem) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 4, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) { o->backup_workers = 1; });
  ASSERT_TRUE(membership_->Leave(ids_[3]).ok());
  ASSERT_TRUE(membership_->Leave(ids_[2]).ok());
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  EXPECT_EQ(store_->version(), 1u);
  ASSERT_TRUE(Push(ids_[1], 1, 1, {3.0f}).ok());
  EXPECT_EQ(store_->version(), 2u);
  EXPECT_EQ(aggregator_->stats().rounds_closed_complete, 1u);
}

TEST_F(AggregatorTest, TheDeadlineClosesARoundOnceTheMinimumQuorumArrived) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) {
          o->round_deadline = absl::Seconds(5);
          o->min_quorum = 2;
        });
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  clock_.Advance(absl::Seconds(10));
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 1u) << "one update is below the minimum quorum of 2";
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(Push(ids_[1], 1, 1, {3.0f}).ok());
  EXPECT_EQ(store_->version(), 2u);
  EXPECT_EQ(Model(), (std::vector<float>{2.0f}));
  const AggregatorStats stats = aggregator_->stats();
  EXPECT_EQ(stats.rounds_closed_by_deadline, 1u);
  EXPECT_EQ(stats.max_round_wait, absl::Seconds(11));
}

TEST_F(AggregatorTest, BeforeTheDeadlineTheRoundWaits) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 2, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) { o->round_deadline = absl::Seconds(5); });
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  clock_.Advance(absl::Seconds(4));
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 1u);
  clock_.Advance(absl::Seconds(1));
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 2u);
}

TEST_F(AggregatorTest, FoldLateAddsALateUpdateToTheOpenRoundWithItsStalenessWeight) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) {
          o->backup_workers = 1;
          o->late_policy = v1::LATE_POLICY_FOLD;
        });
  // Round on version 1 closes with workers 0 and 1: x = (2 + 4) / 2 = 3.
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {4.0f}).ok());
  ASSERT_EQ(store_->version(), 2u);
  // Worker 2's update on version 1 is one round late: tau = 1, s = 1; it waits in round 2.
  auto folded = Push(ids_[2], 1, 1, {30.0f});
  ASSERT_TRUE(folded.ok()) << folded.status();
  EXPECT_TRUE(folded->folded);
  EXPECT_EQ(store_->version(), 2u) << "a folded update does not count towards the quorum";
  ASSERT_TRUE(Push(ids_[0], 2, 1, {0.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 2, 1, {0.0f}).ok());
  ASSERT_EQ(store_->version(), 3u);
  // (1*30 + 0 + 0) / (1 + 1 + 1) = 10, to a float's rounding per update (a running mean).
  EXPECT_FLOAT_EQ(Model()[0], 13.0f);
  // Two rounds late: tau = 2, s = 2^-0.5.
  ASSERT_TRUE(Push(ids_[2], 1, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(ids_[0], 3, 1, {0.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 3, 1, {0.0f}).ok());
  const double s = std::pow(2.0, -0.5);
  EXPECT_NEAR(Model()[0], 13.0 + s / (2.0 + s), 2e-6);
  EXPECT_EQ(aggregator_->stats().late_folded, 2u);
}

TEST_F(AggregatorTest, AWorkerThatJoinsMidRoundIsNotWaitedForUntilTheNextRound) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3);
  ASSERT_TRUE(membership_->Leave(ids_[2]).ok());  // a worker died; the others go on
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {1.0f}).ok());
  ASSERT_EQ(store_->version(), 2u);
  ASSERT_TRUE(Push(ids_[0], 2, 1, {1.0f}).ok());
  const uint64_t newcomer = membership_->Join("new", -1)->id;  // joins during round 2
  ASSERT_TRUE(Push(ids_[1], 2, 1, {1.0f}).ok());
  EXPECT_EQ(store_->version(), 3u) << "round 2 must not wait for the newcomer";
  ASSERT_TRUE(Push(ids_[0], 3, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 3, 1, {1.0f}).ok());
  EXPECT_EQ(store_->version(), 3u) << "round 3 waits for the newcomer";
  ASSERT_TRUE(Push(newcomer, 3, 1, {1.0f}).ok());
  EXPECT_EQ(store_->version(), 4u);
}

TEST_F(AggregatorTest, AWorkerThatNeverJoinsHoldsTheFirstRoundUpForOneLeaseAtMost) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3);
  ASSERT_TRUE(membership_->Leave(ids_[2]).ok());
  // A fresh membership: K = 3, but only two ever join (the third died while the server was down).
  membership_ = std::make_unique<Membership>(3, absl::Seconds(30), &clock_);
  AggregatorOptions options;
  options.clock = &clock_;
  options.num_workers = 3;
  aggregator_ = std::make_unique<Aggregator>(options, store_.get(), membership_.get());
  const uint64_t a = membership_->Join("a", -1)->id, b = membership_->Join("b", -1)->id;
  ASSERT_TRUE(Push(a, 1, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(b, 1, 1, {3.0f}).ok());
  clock_.Advance(absl::Seconds(29));
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 1u) << "within the lease, the round waits for the third worker";
  clock_.Advance(absl::Seconds(1));
  aggregator_->MaybeCloseRound();
  EXPECT_EQ(store_->version(), 2u);
  EXPECT_EQ(Model(), (std::vector<float>{2.0f}));
}

TEST_F(AggregatorTest, AtShutdownTheOpenRoundClosesWithTheMinimumQuorumOrIsDropped) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {3.0f}).ok());
  EXPECT_EQ(aggregator_->FinishOpenRound(), RoundEnd::kClosed);
  EXPECT_EQ(Model(), (std::vector<float>{3.0f}));
  EXPECT_EQ(Push(ids_[1], 2, 1, {1.0f}).status().code(), absl::StatusCode::kUnavailable);

  Build(v1::AGGREGATION_MODE_SYNC, {0.0f}, 3, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) { o->min_quorum = 2; });
  ASSERT_TRUE(Push(ids_[3], 1, 1, {3.0f}).ok());
  EXPECT_EQ(aggregator_->FinishOpenRound(), RoundEnd::kAbandoned);
  EXPECT_EQ(Model(), (std::vector<float>{0.0f}));
  EXPECT_EQ(aggregator_->stats().rounds_abandoned, 1u);
}

// Issue 10, item 2: finite updates whose sum overflows must not poison the model.
constexpr float kFloatMax = std::numeric_limits<float>::max();

bool AllFinite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

TEST_F(AggregatorTest, AsyncPushesOfFloatMaxAreRefusedBeforeTheModelOverflows) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f, 1.0f, -1.0f}, 1);
  const std::vector<float> before = Model();
  auto r = Push(ids_[0], 1, 1, {kFloatMax, kFloatMax, kFloatMax});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("nothing was applied"));
  EXPECT_EQ(Model(), before);
  EXPECT_EQ(store_->version(), 1u) << "a refused update must not cost a version";
  // Half of float's range is allowed; a second such push would go past it and is refused whole.
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1e38f, 1e38f, 1e38f}).ok());
  const std::vector<float> after_first = Model();
  r = Push(ids_[0], 2, 1, {1e38f, 1e38f, 1e38f});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("coordinate 0"));
  EXPECT_EQ(Model(), after_first);
  EXPECT_TRUE(AllFinite(Model()));
  // Updates that bring the model back are fine.
  EXPECT_TRUE(Push(ids_[0], 2, 1, {-1e38f, -1e38f, -1e38f}).ok());
}

TEST_F(AggregatorTest, SyncPushesOfFloatMaxAreRefusedAndTheRoundStaysUsable) {
  Build(v1::AGGREGATION_MODE_SYNC, {0.0f, 1.0f}, 2);
  auto r = Push(ids_[0], 1, 1, {kFloatMax, kFloatMax});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("coordinate 0"));
  // The refused worker may still push for this round; the round closes as if nothing happened.
  ASSERT_TRUE(Push(ids_[0], 1, 1, {2.0f, 2.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {4.0f, 4.0f}).ok());
  EXPECT_EQ(Model(), (std::vector<float>{3.0f, 4.0f}));
}

TEST_F(AggregatorTest, SyncUpdatesNearTheRangeAreCheckedCoordinateByCoordinate) {
  // The bound (largest |x| + largest |u| = 2e38) is past the range, so each coordinate is checked:
  // 1e38 + 0.6e38 and 0 + 1e38 stay in range; then 1e38 + 1e38 at coordinate 1 does not.
  Build(v1::AGGREGATION_MODE_SYNC, {1e38f, 0.0f}, 1);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {0.6e38f, 1e38f}).ok());
  const std::vector<float> after_first = Model();
  EXPECT_EQ(after_first, (std::vector<float>{1e38f + 0.6e38f, 1e38f}));
  auto r = Push(ids_[0], 2, 1, {0.0f, 1e38f});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("coordinate 1"));
  EXPECT_EQ(Model(), after_first);
}

TEST_F(AggregatorTest, AQsgdPayloadWhoseScaleIsFloatMaxIsRefused) {
  Build(v1::AGGREGATION_MODE_ASYNC, std::vector<float>(8, 0.0f), 1);
  v1::EncodingParams qsgd;
  qsgd.set_encoding(v1::ENCODING_QSGD);
  qsgd.set_bits(4);
  qsgd.set_bucket_size(8);
  // Every code at the top level (7) with the positive sign: each value decodes to the scale.
  std::string payload(sizeof(float), '\0');
  std::memcpy(payload.data(), &kFloatMax, sizeof(float));
  payload += std::string(4, static_cast<char>(0x77));
  const std::vector<float> before = Model();
  for (int attempt = 0; attempt < 2; ++attempt) {
    Update u;
    u.worker_id = ids_[0];
    u.sequence = ++sequence_[ids_[0]];
    u.kind = v1::UPDATE_KIND_MODEL_DELTA;
    u.base_version = 1;
    u.sample_count = 1;
    u.encoding = qsgd;
    u.payload = payload;
    auto r = aggregator_->Submit(u);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  EXPECT_EQ(Model(), before);
}

TEST_F(AggregatorTest, UpdatesOverTheRatioBoundAreRefusedWhenItIsOn) {
  Build(v1::AGGREGATION_MODE_ASYNC, {2.0f, -4.0f}, 1, v1::UPDATE_KIND_MODEL_DELTA,
        [](AggregatorOptions* o) { o->max_update_ratio = 10.0; });
  EXPECT_TRUE(Push(ids_[0], 1, 1, {40.0f, 0.0f}).ok());  // 40 <= 10 * 4
  auto r = Push(ids_[0], 2, 1, {0.0f, 500.0f});          // 500 > 10 * 42
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("--max_update_ratio"));
  EXPECT_EQ(Model(), (std::vector<float>{42.0f, -4.0f}));
}

// Item 4: a retry is the same update, so a repeated sequence number with a bad payload is invalid.
TEST_F(AggregatorTest, AReplayedSequenceNumberWithAGarbagePayloadIsInvalidNotADuplicate) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f, 0.0f}, 1);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f, 1.0f}).ok());
  Update u;
  u.worker_id = ids_[0];
  u.sequence = sequence_[ids_[0]];  // the same sequence number again
  u.kind = v1::UPDATE_KIND_MODEL_DELTA;
  u.base_version = 1;
  u.sample_count = 1;
  u.encoding = Fp32Params();
  const std::string garbage = "not four floats";
  u.payload = garbage;
  auto r = aggregator_->Submit(u);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  const std::string nan = Fp32Payload({0.0f, std::nanf("")});
  u.payload = nan;
  EXPECT_EQ(aggregator_->Submit(u).status().code(), absl::StatusCode::kInvalidArgument);
  const std::string good = Fp32Payload({1.0f, 1.0f});
  u.payload = good;
  ASSERT_TRUE(aggregator_->Submit(u).ok());
  EXPECT_TRUE(aggregator_->Submit(u)->duplicate);
}

// Item 10: what is kept per worker does not grow with every id ever seen.
TEST_F(AggregatorTest, ForgetDropsTheSequenceNumberOfAWorkerThatLeft) {
  Build(v1::AGGREGATION_MODE_ASYNC, {0.0f}, 2);
  ASSERT_TRUE(Push(ids_[0], 1, 1, {1.0f}).ok());
  ASSERT_TRUE(Push(ids_[1], 1, 1, {1.0f}).ok());
  EXPECT_EQ(aggregator_->tracked_workers(), 2u);
  ASSERT_TRUE(membership_->Leave(ids_[0]).ok());
  aggregator_->Forget(ids_[0]);
  EXPECT_EQ(aggregator_->tracked_workers(), 1u);
}

}  // namespace
}  // namespace ps
