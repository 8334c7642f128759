// A server that knows a model only by its layout (docs/layouts.md): the first worker's initial
// model becomes version 1, other layouts are refused naming the tensor, an upload cut off midway
// leaves no model, shard boundaries fall inside tensors, and checkpoints export by tensor name.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <numeric>
#include <thread>

#include "common/model_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

// Five tensors with odd sizes, so that shard boundaries fall inside them.
Layout FiveTensors() {
  return *Layout::Create({{"embed", {17, 8}},
                          {"conv.weight", {4, 3, 3}},
                          {"conv.bias", {4}},
                          {"head.weight", {5, 7}},
                          {"scale", {}}});
}

std::vector<float> Ramp(uint64_t n, float start = 0.0f) {
  std::vector<float> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = start + 0.001f * static_cast<float>(i);
  return v;
}

ServerOptions LayoutOnlyOptions(const Layout& layout, int num_workers, uint32_t shard_index = 0,
                                uint32_t shard_count = 1) {
  ServerOptions o = testing::SmallServerOptions(v1::AGGREGATION_MODE_ASYNC, num_workers, 1);
  o.layout = layout;
  o.shard_index = shard_index;
  o.shard_count = shard_count;
  return o;
}

TEST(ModelLayout, TheFirstWorkersInitialModelBecomesVersionOneOnEveryShard) {
  const Layout layout = FiveTensors();
  auto shard0 = testing::StartServerWithoutModel(LayoutOnlyOptions(layout, 2, 0, 2));
  auto shard1 = testing::StartServerWithoutModel(LayoutOnlyOptions(layout, 2, 1, 2));
  ASSERT_NE(shard0, nullptr);
  ASSERT_NE(shard1, nullptr);
  EXPECT_FALSE(shard0->has_model());
  EXPECT_EQ(shard0->GetStatus().layout().tensors_size(), 5) << "the required layout is shown";

  const ModelValues first{layout, Ramp(layout.size(), 1.0f)};
  const ModelValues second{layout, Ramp(layout.size(), 2.0f)};
  auto a = testing::ConnectShards({shard0.get(), shard1.get()}, "a");
  auto b = testing::ConnectShards({shard0.get(), shard1.get()}, "b");
  absl::StatusOr<v1::JoinResponse> joined_a = a->Join(std::nullopt, &first);
  ASSERT_TRUE(joined_a.ok()) << joined_a.status();
  absl::StatusOr<v1::JoinResponse> joined_b = b->Join(std::nullopt, &second);
  ASSERT_TRUE(joined_b.ok()) << joined_b.status();
  EXPECT_EQ(joined_a->model_size(), layout.size());

  // Everyone starts from the first worker's model, split at a point inside "embed".
  const uint64_t boundary = shard0->GetStatus().model_size() / 2;
  EXPECT_LT(boundary, layout.tensors()[0].size());
  std::vector<float> pulled(layout.size());
  std::vector<absl::StatusOr<PullResult>> results =
      b->Pull({0, 0}, {true, true}, absl::Seconds(5), absl::MakeSpan(pulled));
  ASSERT_TRUE(results[0].ok() && results[1].ok());
  EXPECT_EQ(results[0]->version, 1u);
  EXPECT_EQ(pulled, first.values);
  const v1::StatusResponse status = shard1->GetStatus();
  EXPECT_TRUE(status.has_model());
  EXPECT_EQ(status.layout().tensors(1).name(), "conv.weight");
  EXPECT_EQ(status.layout_fingerprint(), layout.Fingerprint());
}

TEST(ModelLayout, AServerWithoutAnyLayoutAdoptsTheFirstWorkersAndRefusesAnother) {
  auto server = testing::StartServerWithoutModel(
      testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 2, 1));
  ASSERT_NE(server, nullptr);
  const Layout layout = FiveTensors();
  auto a = testing::ConnectShards({server.get()}, "a");
  const ModelValues initial{layout, Ramp(layout.size())};
  ASSERT_TRUE(a->Join(std::nullopt, &initial).ok());
  EXPECT_EQ(*server->Model().values, initial.values);

  std::vector<TensorShape> tensors = layout.tensors();
  tensors[3].shape = {7, 5};
  const Layout other = *Layout::Create(tensors);
  auto b = testing::ConnectShards({server.get()}, "b");
  const ModelValues theirs{other, Ramp(other.size())};
  absl::Status refused = b->Join(std::nullopt, &theirs).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("tensor 3"));
  EXPECT_THAT(refused.message(), HasSubstr("head.weight [7, 5]"));
  EXPECT_THAT(refused.message(), HasSubstr("head.weight [5, 7]"));
  EXPECT_EQ(server->GetStatus().members_size(), 1) << "the refused worker is not a member";
}

TEST(ModelLayout, AnUploadCutOffMidwayLeavesNoModelAndTheServerStillServes) {
  const Layout layout = *Layout::Flat(3 << 20);  // 12 MiB: many chunks
  auto server = testing::StartServerWithoutModel(LayoutOnlyOptions(layout, 1));
  ASSERT_NE(server, nullptr);
  auto stub = v1::ParameterServer::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    v1::PushAck ack;
    auto writer = stub->Push(&context, &ack);
    v1::UpdateChunk chunk;
    v1::UpdateHeader* h = chunk.mutable_header();
    h->set_kind(v1::UPDATE_KIND_INITIAL_MODEL);
    h->mutable_encoding()->set_encoding(v1::ENCODING_FP32);
    h->set_num_elements(layout.size());
    h->set_payload_bytes(layout.size() * 4);
    *h->mutable_layout() = layout.ToProto();
    chunk.set_data(std::string(1 << 20, '\0'));
    ASSERT_TRUE(writer->Write(chunk));
    chunk.clear_header();
    chunk.set_offset(1 << 20);
    ASSERT_TRUE(writer->Write(chunk));
    context.TryCancel();  // the client dies with two of twelve chunks sent
    EXPECT_FALSE(writer->Finish().ok());
  }
  // The server has no model, still answers, and takes the next complete upload.
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(server->has_model());
  auto client = testing::Connect(*server, "next");
  absl::StatusOr<v1::StatusResponse> status = client->Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_FALSE(status->has_model());
  absl::StatusOr<v1::JoinResponse> asked = client->Join(std::nullopt, &layout);
  ASSERT_TRUE(asked.ok()) << asked.status();
  EXPECT_TRUE(asked->initial_model_needed());
  const std::vector<float> values = Ramp(layout.size());
  ASSERT_TRUE(client->UploadInitialModel(layout, values).ok());
  EXPECT_TRUE(server->has_model());
  EXPECT_EQ(*server->Model().values, values);
  EXPECT_EQ(client->UploadInitialModel(layout, values).code(), absl::StatusCode::kAlreadyExists);
}

TEST(ModelLayout, CheckpointsKeepTheLayoutAndExportByTensorName) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "model_layout_export";
  std::filesystem::remove_all(dir);
  const Layout layout = FiveTensors();
  std::vector<std::string> dirs;
  std::vector<std::unique_ptr<ParameterServer>> shards;
  for (uint32_t i = 0; i < 2; ++i) {
    ServerOptions o = LayoutOnlyOptions(layout, 1, i, 2);
    dirs.push_back((dir / ("shard" + std::to_string(i))).string());
    o.checkpoint_dir = dirs.back();
    shards.push_back(testing::StartServerWithoutModel(o));
    ASSERT_NE(shards.back(), nullptr);
  }
  auto client = testing::ConnectShards({shards[0].get(), shards[1].get()});
  const ModelValues initial{layout, Ramp(layout.size())};
  ASSERT_TRUE(client->Join(std::nullopt, &initial).ok());
  for (auto& shard : shards) shard->Shutdown();

  // A restart with no layout given takes the checkpoint's.
  ServerOptions again = testing::SmallServerOptions(v1::AGGREGATION_MODE_ASYNC, 1, 1);
  again.checkpoint_dir = dirs[0];
  again.shard_count = 2;
  auto resumed = testing::StartServerWithoutModel(again);
  ASSERT_NE(resumed, nullptr);
  EXPECT_TRUE(resumed->has_model());
  EXPECT_EQ(resumed->GetStatus().layout_fingerprint(), layout.Fingerprint());
  resumed.reset();

  const std::string npz = (dir / "model.npz").string();
  absl::StatusOr<uint64_t> version = ExportCheckpoints(dirs, npz);
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(*version, 1u);
  absl::StatusOr<ModelValues> exported = ReadModelFile(npz, nullptr);
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->layout, layout);
  EXPECT_EQ(exported->values, initial.values);
  absl::Status one = ExportCheckpoints({dirs[0]}, npz).status();
  EXPECT_EQ(one.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(one.message(), HasSubstr("all 2 shards"));
}

}  // namespace
}  // namespace ps
