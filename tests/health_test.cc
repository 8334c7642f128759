// grpc.health.v1 and server reflection, asked the way an orchestrator or grpcurl would: the
// server answers NOT_SERVING (and refuses calls with UNAVAILABLE) while it loads its model, and
// SERVING once it is loaded.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

// The serving status of `service` ("" = the server as a whole), or -1 with the error code.
int Check(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
          grpc::StatusCode* code = nullptr) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (code != nullptr) *code = status.error_code();
  return status.ok() ? response.status() : -1;
}

std::shared_ptr<grpc::Channel> Channel(int port) {
  return grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureChannelCredentials());
}

TEST(Health, NotServingWhileTheModelLoadsThenServing) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  int while_loading = -2, ps_while_loading = -2;
  grpc::StatusCode status_code = grpc::StatusCode::OK;
  options.on_loading = [&](int port) {
    auto channel = Channel(port);
    while_loading = Check(channel, "");
    ps_while_loading = Check(channel, "ps.v1.ParameterServer");
    auto stub = v1::ParameterServer::NewStub(channel);
    grpc::ClientContext context;
    v1::StatusResponse response;
    status_code = stub->Status(&context, v1::StatusRequest(), &response).error_code();
    // Issue 10, item 1: a Heartbeat here killed the process (SIGSEGV). Every call is refused.
    auto refused = [&](const grpc::Status& s, const char* call) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << call << ": " << s.error_message();
    };
    {
      grpc::ClientContext c;
      v1::HeartbeatRequest r;
      r.set_worker_id(42);
      r.mutable_eval()->set_version(1);
      v1::HeartbeatResponse out;
      refused(stub->Heartbeat(&c, r, &out), "Heartbeat");
    }
    {
      grpc::ClientContext c;
      v1::JoinResponse out;
      refused(stub->Join(&c, v1::JoinRequest(), &out), "Join");
    }
    {
      grpc::ClientContext c;
      v1::LeaveRequest r;
      r.set_worker_id(42);
      v1::LeaveResponse out;
      refused(stub->Leave(&c, r, &out), "Leave");
    }
    {
      grpc::ClientContext c;
      v1::PushAck ack;
      auto writer = stub->Push(&c, &ack);
      v1::UpdateChunk chunk;
      chunk.mutable_header()->set_worker_id(42);
      writer->Write(chunk);
      writer->WritesDone();
      refused(writer->Finish(), "Push");
    }
    {
      grpc::ClientContext c;
      auto reader = stub->Pull(&c, v1::PullRequest());
      v1::ModelChunk chunk;
      while (reader->Read(&chunk)) {
      }
      refused(reader->Finish(), "Pull");
    }
  };
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(while_loading, HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(ps_while_loading, HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(status_code, grpc::StatusCode::UNAVAILABLE);

  auto channel = Channel(server->port());
  EXPECT_EQ(Check(channel, ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Check(channel, "ps.v1.ParameterServer"), HealthCheckResponse::SERVING);
  grpc::StatusCode code;
  EXPECT_EQ(Check(channel, "no.such.Service", &code), -1);
  EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND);
}

TEST(Health, NotServingOnceShutdownBegins) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  auto server = testing::StartServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = Channel(server->port());
  ASSERT_EQ(Check(channel, ""), HealthCheckResponse::SERVING);
  server->Shutdown(absl::Seconds(1));
  EXPECT_NE(Check(channel, ""), HealthCheckResponse::SERVING);
}

// One ServerReflectionInfo exchange with list_services, with raw bytes: the reflection messages'
// C++ classes live inside libgrpc++_reflection, so the test encodes the request itself
// (field 7, list_services = "*") and looks for the service names in the answer.
TEST(Reflection, ListsTheParameterServerService) {
  auto server = testing::StartServer(testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1));
  ASSERT_NE(server, nullptr);
  grpc::GenericStub stub(Channel(server->port()));
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t expected) {
    ASSERT_TRUE(cq.Next(&tag, &ok));
    ASSERT_EQ(reinterpret_cast<intptr_t>(tag), expected);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  ASSERT_TRUE(ok);
  const std::string request("\x3a\x01*", 3);
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  step(2);
  ASSERT_TRUE(ok);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  step(3);
  ASSERT_TRUE(ok) << "no reflection answer";
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  std::string answer;
  for (const grpc::Slice& s : slices)
    answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_THAT(answer, HasSubstr("ps.v1.ParameterServer"));
  EXPECT_THAT(answer, HasSubstr("grpc.health.v1.Health"));
}

}  // namespace
}  // namespace ps
