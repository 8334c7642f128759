// Session::Sync's contract, on FakeSession (GrpcSession's is tested through real servers in
// tests/).
#include <vector>

#include "client/fake_session.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

ModelValues TwoTensors() {
  absl::StatusOr<Layout> layout = Layout::Create({{"w", {2, 2}}, {"b", {1}}});
  EXPECT_TRUE(layout.ok()) << layout.status();
  return {*layout, {1, 2, 3, 4, 5}};
}

v1::TrainingConfig OneWorkerSync() {
  v1::TrainingConfig config;
  config.set_mode(v1::AGGREGATION_MODE_SYNC);
  config.set_update_kind(v1::UPDATE_KIND_MODEL_DELTA);
  config.set_num_workers(1);
  return config;
}

TEST(Session, SyncPushesTheDeltaAndWritesTheNewGlobalModelBack) {
  FakeSession session(OneWorkerSync());
  ASSERT_TRUE(session.Join(TwoTensors()).ok());
  std::vector<float> params(session.model().begin(), session.model().end());
  for (float& p : params) p += 0.5f;  // "local steps"
  absl::StatusOr<RoundResult> round = session.Sync(absl::MakeSpan(params), {});
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->version, 2u);
  EXPECT_EQ(params, (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f, 5.5f}));
  EXPECT_EQ(params, std::vector<float>(session.model().begin(), session.model().end()));
}

TEST(Session, SyncRefusesParametersOfAnotherSize) {
  FakeSession session(OneWorkerSync());
  ASSERT_TRUE(session.Join(TwoTensors()).ok());
  std::vector<float> params(4);
  EXPECT_EQ(session.Sync(absl::MakeSpan(params), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session.version(), 1u);  // nothing was pushed
  EXPECT_TRUE(session.pushes().empty());
}

TEST(Session, PushBeforeJoinIsAPreconditionFailure) {
  FakeSession session(OneWorkerSync());
  std::vector<float> update(5);
  EXPECT_EQ(session.Push(update, {}).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ps
