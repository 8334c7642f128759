// The handler layer without sockets: every call before the model is loaded, and the protocol's
// sharp edges (issue 10).
#include "server/service_handler.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

ServiceOptions Options(int num_workers) {
  ServiceOptions o;
  o.training.set_mode(v1::AGGREGATION_MODE_ASYNC);
  o.training.set_num_workers(num_workers);
  o.training.add_allowed_encodings(v1::ENCODING_FP32);
  o.chunk_bytes = 1024;
  return o;
}

Layout FourFloats() { return *Layout::Create({{"w", {2, 2}}}); }

v1::UpdateHeader Header(uint64_t worker_id) {
  v1::UpdateHeader h;
  h.set_worker_id(worker_id);
  h.set_sequence(1);
  h.set_kind(v1::UPDATE_KIND_MODEL_DELTA);
  h.set_base_version(1);
  h.set_sample_count(1);
  h.mutable_encoding()->set_encoding(v1::ENCODING_FP32);
  h.set_num_elements(4);
  h.set_payload_bytes(16);
  return h;
}

class ServiceHandlerTest : public ::testing::Test {
 protected:
  explicit ServiceHandlerTest(int num_workers = 2) : handler_(Options(num_workers)) {
    store_ = std::make_unique<ParameterStore>(std::vector<float>(4, 0.0f));
    membership_ = std::make_unique<Membership>(num_workers, absl::Seconds(30), &clock_);
    AggregatorOptions aggregator;
    aggregator.mode = v1::AGGREGATION_MODE_ASYNC;
    aggregator.num_workers = num_workers;
    aggregator.clock = &clock_;
    aggregator_ = std::make_unique<Aggregator>(aggregator, store_.get(), membership_.get());
    wait_list_ = std::make_unique<VersionWaitList>(1);
  }
  void Attach() {
    handler_.Attach(FourFloats(), store_.get(), membership_.get(), aggregator_.get(),
                    wait_list_.get());
  }
  uint64_t JoinAs(const std::string& identity, int rank = -1) {
    v1::JoinRequest join;
    if (rank >= 0) join.set_requested_rank(rank);
    absl::StatusOr<v1::JoinResponse> joined = handler_.Join({identity, "test"}, join);
    EXPECT_TRUE(joined.ok()) << joined.status();
    return joined.ok() ? joined->worker_id() : 0;
  }

  FakeClock clock_;
  ServiceHandler handler_;
  std::unique_ptr<ParameterStore> store_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<Aggregator> aggregator_;
  std::unique_ptr<VersionWaitList> wait_list_;
};

// Item 1: the process died with SIGSEGV on a Heartbeat while it loaded a large model.
TEST_F(ServiceHandlerTest, EveryCallBeforeTheModelIsLoadedIsUnavailableNotACrash) {
  const Caller caller{"", "test"};
  auto expect_loading = [](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_THAT(s.message(), HasSubstr("loading"));
  };
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(12345);
  heartbeat.mutable_eval()->set_version(1);
  expect_loading(handler_.Heartbeat(caller, heartbeat).status());
  expect_loading(handler_.Join(caller, v1::JoinRequest()).status());
  v1::LeaveRequest leave;
  leave.set_worker_id(12345);
  expect_loading(handler_.Leave(caller, leave));
  expect_loading(handler_.Status(caller).status());
  expect_loading(handler_.AdmitPush(caller, Header(12345)).status());
  expect_loading(handler_.SubmitPush(Header(12345), std::string(16, '\0')).status());
  expect_loading(handler_.AdmitPull(caller, v1::PullRequest()).status());
  handler_.CloseRoundIfDue();
  EXPECT_FALSE(handler_.WaitForNewer(0, absl::Now(), nullptr));
  EXPECT_FALSE(handler_.CancelWait(nullptr));
  EXPECT_EQ(handler_.BuildStatus().version(), 0u);

  Attach();
  EXPECT_TRUE(handler_.Status(caller).ok());
  EXPECT_EQ(handler_.BuildStatus().version(), 1u);
}

// Item 10: proto3 made an unset requested_rank mean rank 0.
TEST_F(ServiceHandlerTest, AJoinWithoutARequestedRankTakesAnyFreeRank) {
  Attach();
  JoinAs("", 0);
  absl::StatusOr<v1::JoinResponse> second = handler_.Join({"", "test"}, v1::JoinRequest());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->rank(), 1u);
}

// Item 10: a bad Join threw out the live member with the same identity and still failed.
TEST_F(ServiceHandlerTest, ARefusedJoinDoesNotEvictTheLiveMemberWithTheSameIdentity) {
  Attach();
  const uint64_t alice = JoinAs("alice", 0);
  v1::JoinRequest bad;
  bad.set_requested_rank(7);  // out of range for two workers
  EXPECT_EQ(handler_.Join({"alice", "test"}, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::JoinRequest long_name;
  long_name.set_worker_name(std::string(300, 'x'));
  EXPECT_EQ(handler_.Join({"alice", "test"}, long_name).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(membership_->IsMember(alice));
  // A good Join from the same identity does replace it (the worker restarted), on the same rank.
  v1::JoinRequest again;
  again.set_requested_rank(0);
  absl::StatusOr<v1::JoinResponse> rejoined = handler_.Join({"alice", "test"}, again);
  ASSERT_TRUE(rejoined.ok()) << rejoined.status();
  EXPECT_FALSE(membership_->IsMember(alice));
  EXPECT_EQ(rejoined->rank(), 0u);
}

// Item 5: NaN accuracy, Inf loss, accuracy 7 and version 2^64-1 were taken and stuck in Status.
TEST_F(ServiceHandlerTest, EvaluationReportsThatCannotBeTrueAreRefused) {
  Attach();
  const uint64_t id = JoinAs("");
  auto heartbeat = [&](double loss, double accuracy, uint64_t version) {
    v1::HeartbeatRequest request;
    request.set_worker_id(id);
    request.mutable_eval()->set_test_loss(loss);
    request.mutable_eval()->set_test_accuracy(accuracy);
    request.mutable_eval()->set_version(version);
    return handler_.Heartbeat({"", "test"}, request).status();
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (const absl::Status& s :
       {heartbeat(0.5, nan, 1), heartbeat(inf, 0.5, 1), heartbeat(0.5, 7, 1), heartbeat(-1, 0.5, 1),
        heartbeat(0.5, 0.5, 0)}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("eval."));
  }
  EXPECT_EQ(handler_.BuildStatus().last_eval().version(), 0u) << "nothing bad was kept";
  // A version from the future (another shard may be ahead; or a lie) is kept as this shard's
  // current version, so it cannot block the reports that follow.
  EXPECT_TRUE(heartbeat(0.5, 0.5, std::numeric_limits<uint64_t>::max()).ok());
  EXPECT_EQ(handler_.BuildStatus().last_eval().version(), 1u);
  EXPECT_TRUE(heartbeat(0.4, 0.85, 1).ok());
  EXPECT_DOUBLE_EQ(handler_.BuildStatus().last_eval().test_accuracy(), 0.85);
}

// Item 6: a worker name with a newline wrote a forged "E event=shutdown" line into the log.
TEST_F(ServiceHandlerTest, AWorkerNameCannotForgeOrSplitALogLine) {
  Attach();
  v1::JoinRequest join;
  constexpr char kName[] = "w\n2026-01-01T00:00:00.000Z E event=shutdown\0x";
  join.set_worker_name(std::string(kName, sizeof(kName) - 1));  // the NUL included
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(handler_.Join({"", "test"}, join).ok());
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_THAT(log, HasSubstr("name=\"w\\n2026"));
  EXPECT_THAT(log, HasSubstr("\\x00x"));
  EXPECT_THAT(log, Not(HasSubstr("\nE event=shutdown")));
}

v1::UpdateHeader UploadHeader(const Layout& layout) {
  v1::UpdateHeader h;
  h.set_kind(v1::UPDATE_KIND_INITIAL_MODEL);
  h.mutable_encoding()->set_encoding(v1::ENCODING_FP32);
  h.set_num_elements(layout.size());
  h.set_payload_bytes(layout.size() * sizeof(float));
  *h.mutable_layout() = layout.ToProto();
  return h;
}

// Without a model a Join says so (with the range to upload) and makes no member; the first
// complete upload is installed, a second one is told the model exists, and from then on a Join
// with another layout is refused naming the tensor.
TEST(ServiceHandlerWithoutModel, JoinsAskForTheInitialModelAndTheFirstUploadIsInstalled) {
  ServiceOptions options = Options(2);
  options.shard_index = 1;
  options.shard_count = 2;
  std::vector<std::pair<Layout, std::vector<float>>> installed;
  ServiceHandler* handler_ptr = nullptr;
  ParameterStore store(std::vector<float>{3, 4});
  FakeClock clock;
  Membership membership(2, absl::Seconds(30), &clock);
  AggregatorOptions aggregator_options;
  aggregator_options.mode = v1::AGGREGATION_MODE_ASYNC;
  aggregator_options.clock = &clock;
  Aggregator aggregator(aggregator_options, &store, &membership);
  VersionWaitList wait_list(1);
  options.install_uploaded = [&](const Layout& layout, std::vector<float> values,
                                 uint64_t) -> absl::StatusOr<uint64_t> {
    installed.emplace_back(layout, values);
    handler_ptr->Attach(layout, &store, &membership, &aggregator, &wait_list);
    return 1;
  };
  ServiceHandler handler(options);
  handler_ptr = &handler;
  const Caller caller{"", "test"};
  EXPECT_EQ(handler.Join(caller, v1::JoinRequest()).status().code(),
            absl::StatusCode::kUnavailable);  // still loading
  handler.AwaitModel();

  v1::JoinRequest join;
  *join.mutable_layout() = FourFloats().ToProto();
  absl::StatusOr<v1::JoinResponse> asked = handler.Join(caller, join);
  ASSERT_TRUE(asked.ok()) << asked.status();
  EXPECT_TRUE(asked->initial_model_needed());
  EXPECT_EQ(asked->worker_id(), 0u);
  EXPECT_EQ(asked->shard_begin(), 2u);  // shard 1 of 2 of 4 coordinates
  EXPECT_EQ(asked->shard_end(), 4u);
  EXPECT_FALSE(handler.BuildStatus().has_model());
  EXPECT_EQ(handler.AdmitPull(caller, v1::PullRequest()).status().code(),
            absl::StatusCode::kUnavailable);

  v1::UpdateHeader header = UploadHeader(FourFloats());
  header.set_num_elements(2);
  header.set_payload_bytes(8);
  absl::StatusOr<PushAdmission> admitted = handler.AdmitPush(caller, header);
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_EQ(admitted->rules.shard_begin, 2u);
  EXPECT_EQ(handler.AdmitPush(caller, header).status().code(), absl::StatusCode::kUnavailable)
      << "one upload at a time";
  const std::vector<float> values = {3, 4};
  std::string payload(reinterpret_cast<const char*>(values.data()), 8);
  std::string bad = payload;
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(bad.data(), &inf, 4);
  EXPECT_EQ(handler.SubmitPush(header, bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(installed.empty()) << "a refused upload installs nothing";
  absl::StatusOr<SubmitResult> result = handler.SubmitPush(header, payload);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->version, 1u);
  ASSERT_EQ(installed.size(), 1u);
  EXPECT_EQ(installed[0].second, values);
  admitted->slot.Release();

  EXPECT_EQ(handler.AdmitPush(caller, header).status().code(), absl::StatusCode::kAlreadyExists);
  absl::StatusOr<v1::JoinResponse> member = handler.Join(caller, join);
  ASSERT_TRUE(member.ok()) << member.status();
  EXPECT_FALSE(member->initial_model_needed());
  EXPECT_NE(member->worker_id(), 0u);
  EXPECT_EQ(member->layout().tensors(0).name(), "w");
  v1::JoinRequest other;
  *other.mutable_layout() = Layout::Create({{"w", {4}}})->ToProto();
  absl::Status refused = handler.Join(caller, other).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("w [4]"));
  EXPECT_THAT(refused.message(), HasSubstr("w [2, 2]"));
  EXPECT_TRUE(handler.BuildStatus().has_model());
  EXPECT_EQ(handler.BuildStatus().layout_fingerprint(), FourFloats().Fingerprint());
}

TEST(ServiceHandlerWithoutModel, UploadsOfAnotherLayoutThanRequiredOrTooLargeAreRefused) {
  ServiceOptions options = Options(1);
  options.required_layout = FourFloats();
  options.max_model_bytes = 1 << 20;
  ServiceHandler handler(options);
  handler.AwaitModel();
  const Caller caller{"", "test"};
  v1::JoinRequest join;
  *join.mutable_layout() = Layout::Create({{"w", {5}}})->ToProto();
  EXPECT_EQ(handler.Join(caller, join).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(handler.AdmitPush(caller, UploadHeader(*Layout::Create({{"w", {5}}}))).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ServiceOptions open = Options(1);
  open.max_model_bytes = 1 << 20;
  ServiceHandler unbounded(open);
  unbounded.AwaitModel();
  absl::Status huge =
      unbounded.AdmitPush(caller, UploadHeader(*Layout::Create({{"w", {1 << 20}}}))).status();
  EXPECT_EQ(huge.code(), absl::StatusCode::kResourceExhausted) << huge;
  // A refused upload holds no place: still one upload at a time afterwards.
  absl::StatusOr<PushAdmission> first = unbounded.AdmitPush(caller, UploadHeader(FourFloats()));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(unbounded.AdmitPush(caller, UploadHeader(FourFloats())).status().code(),
            absl::StatusCode::kUnavailable);
  first->slot.Release();
  v1::UpdateHeader quantized = UploadHeader(FourFloats());
  quantized.mutable_encoding()->set_encoding(v1::ENCODING_QSGD);
  EXPECT_EQ(unbounded.AdmitPush(caller, quantized).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A member of the server before it lost its model is told to join again, not to wait.
  v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(77);
  EXPECT_EQ(unbounded.Heartbeat(caller, heartbeat).status().code(), absl::StatusCode::kNotFound);
  v1::PullRequest pull;
  pull.set_worker_id(77);
  EXPECT_EQ(unbounded.AdmitPull(caller, pull).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unbounded.AdmitPull(caller, v1::PullRequest()).status().code(),
            absl::StatusCode::kUnavailable);
  v1::JoinRequest no_layout;
  absl::StatusOr<v1::JoinResponse> required = handler.Join(caller, no_layout);
  ASSERT_TRUE(required.ok());
  EXPECT_TRUE(required->initial_model_needed());
  EXPECT_EQ(required->model_size(), 4u) << "the required layout is told to a joiner without one";
}

TEST(LogSafe, EscapesControlBytesAndBoundsTheLength) {
  EXPECT_EQ(LogSafe("plain-name_1"), "plain-name_1");
  EXPECT_EQ(LogSafe("a\nb\"c\\"), "a\\nb\\\"c\\\\");
  EXPECT_EQ(LogSafe(std::string("\0\x7f\xff", 3)), "\\x00\\x7f\\xff");
  EXPECT_EQ(LogSafe(std::string(200, 'a'), 4), "aaaa...(200 bytes)");
}

TEST_F(ServiceHandlerTest, PushPlacesAreHeldUntilReleased) {
  ServiceOptions options = Options(2);
  options.max_concurrent_pushes = 1;
  ServiceHandler handler(options);
  handler.Attach(FourFloats(), store_.get(), membership_.get(), aggregator_.get(),
                 wait_list_.get());
  const uint64_t id = membership_->Join("w", -1)->id;
  absl::StatusOr<PushAdmission> first = handler.AdmitPush({"", "test"}, Header(id));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->rules.shard_size(), 4u);
  EXPECT_EQ(handler.AdmitPush({"", "test"}, Header(id)).status().code(),
            absl::StatusCode::kResourceExhausted);
  first->slot.Release();
  EXPECT_TRUE(handler.AdmitPush({"", "test"}, Header(id)).ok());
  EXPECT_EQ(handler.BuildStatus().pushes_in_progress(), 0u) << "the slot went with its owner";
}

TEST_F(ServiceHandlerTest, APullPlanIsTheFullModelOrUnchanged) {
  Attach();
  absl::StatusOr<PullAdmission> admitted = handler_.AdmitPull({"", "test"}, v1::PullRequest());
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  PullPlan full = handler_.PlanPull(admitted->have_version, {v1::ENCODING_FP32}, absl::Now());
  ASSERT_EQ(full.segments.size(), 1u);
  EXPECT_EQ(full.segments[0].header.kind(), v1::ModelHeader::KIND_FULL);
  EXPECT_EQ(full.segments[0].size, 16u);
  PullPlan same = handler_.PlanPull(1, {v1::ENCODING_FP32}, absl::Now());
  EXPECT_EQ(same.segments[0].header.kind(), v1::ModelHeader::KIND_UNCHANGED);
  v1::PullRequest future;
  future.set_have_version(99);
  EXPECT_EQ(handler_.AdmitPull({"", "test"}, future)->have_version, 0u);
}

}  // namespace
}  // namespace ps
