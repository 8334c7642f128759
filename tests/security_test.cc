// TLS, mutual TLS and per-worker tokens against a real server over real sockets. The certificates
// are made for this test with openssl.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "tests/test_support.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

std::string Dir() { return ::testing::TempDir() + "ps_security_test_" + std::to_string(getpid()); }

// A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a client
// certificate from a second, untrusted CA.
class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::filesystem::create_directories(Dir());
    const std::string script = R"(set -e
cd ")" + Dir() + R"("
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj "/CN=$1"; }
cert() {  # name ca san
  key $1.key
  openssl req -new -key $1.key -out $1.csr -subj "/CN=$1"
  printf 'subjectAltName=%s\n' "$3" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 \
    -extfile $1.ext 2>/dev/null
}
ca ca; ca rogue-ca
cert server ca DNS:localhost,IP:127.0.0.1
cert client ca DNS:worker-0
cert rogue rogue-ca DNS:worker-0
printf 'alice aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nbob   bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb # second\n' > tokens
)";
    ASSERT_EQ(std::system(("bash -c '" + Escape(script) + "'").c_str()), 0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(Dir()); }

  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out;
  }
  static std::string File(const std::string& name) { return Dir() + "/" + name; }

  void Start(const ServerSecurityOptions& security, const std::string& health_listen = "") {
    ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_ASYNC, 3, 1);
    options.security = security;
    options.health_listen_address = health_listen;
    server_ = testing::StartServer(options);
    ASSERT_NE(server_, nullptr);
  }

  std::unique_ptr<PsClient> Client(const std::string& token, bool tls, const std::string& cert) {
    PsClientOptions o;
    o.servers = {server_->address()};
    o.worker_name = "test";
    o.rpc_timeout = absl::Seconds(2);   // Join waits for a connection that a refused one never gets
    o.retry_budget = absl::Seconds(1);  // a refused handshake shows as UNAVAILABLE
    o.token = token;
    if (tls) o.tls_ca_file = File("ca.pem");
    if (!cert.empty()) {
      o.tls_cert_file = File(cert + ".pem");
      o.tls_key_file = File(cert + ".key");
    }
    auto client = PsClient::Create(o);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  absl::StatusOr<v1::PushAck> PushZeros(PsClient* client) {
    const size_t d = server_->Model().values->size();
    return client->Push(v1::UPDATE_KIND_MODEL_DELTA, server_->Model().version, 1,
                        std::vector<float>(d, 0.5f), 0.0);
  }

  std::unique_ptr<ParameterServer> server_;
};

const char kAlice[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const char kBob[] = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

TEST_F(SecurityTest, WithTokensACallWithoutOneOrWithAWrongOneIsUnauthenticated) {
  ServerSecurityOptions s;
  s.tokens_file = File("tokens");
  Start(s);
  EXPECT_EQ(Client("", false, "")->Join().status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = Client("cccccccccccccccccccccccccccccccc", false, "")->Join();
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("unknown token"));
  EXPECT_EQ(Client("", false, "")->Status().status().code(), absl::StatusCode::kUnauthenticated);
  std::vector<float> model(server_->Model().values->size());
  EXPECT_EQ(
      Client("", false, "")->Pull(0, absl::ZeroDuration(), absl::MakeSpan(model)).status().code(),
      absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(server_->GetStatus().members().empty());
  EXPECT_GE(server_->GetStatus().calls_refused_auth(), 4u);
}

TEST_F(SecurityTest, AValidTokenCannotActAsAnotherWorkersId) {
  ServerSecurityOptions s;
  s.tokens_file = File("tokens");
  Start(s);
  auto alice = Client(kAlice, false, "");
  ASSERT_TRUE(alice->Join().ok());
  ASSERT_TRUE(PushZeros(alice.get()).ok());
  const uint64_t version = server_->Model().version;
  const std::vector<float> model = *server_->Model().values;

  // Bob's raw calls, with Bob's valid token but Alice's worker id.
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::ParameterServer::NewStub(channel);
  auto as_bob = [](grpc::ClientContext* c) {
    c->AddMetadata("authorization", std::string("Bearer ") + kBob);
  };
  {
    grpc::ClientContext c;
    as_bob(&c);
    v1::PushAck ack;
    auto writer = stub->Push(&c, &ack);
    v1::UpdateChunk chunk;
    v1::UpdateHeader* h = chunk.mutable_header();
    h->set_worker_id(alice->worker_id());
    h->set_sequence(1000);
    h->set_kind(v1::UPDATE_KIND_MODEL_DELTA);
    h->set_base_version(version);
    h->set_sample_count(1);
    h->mutable_encoding()->set_encoding(v1::ENCODING_FP32);
    h->set_num_elements(model.size());
    h->set_payload_bytes(model.size() * 4);
    chunk.set_data(std::string(std::min<size_t>(model.size() * 4, 1 << 20), '\0'));
    writer->Write(chunk);
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  }
  {
    grpc::ClientContext c;
    as_bob(&c);
    v1::HeartbeatRequest request;
    request.set_worker_id(alice->worker_id());
    v1::HeartbeatResponse response;
    EXPECT_EQ(stub->Heartbeat(&c, request, &response).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext c;
    as_bob(&c);
    v1::LeaveRequest request;
    request.set_worker_id(alice->worker_id());
    v1::LeaveResponse response;
    EXPECT_EQ(stub->Leave(&c, request, &response).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  // Nothing applied, and Alice is still a member.
  EXPECT_EQ(server_->Model().version, version);
  EXPECT_EQ(*server_->Model().values, model);
  EXPECT_EQ(server_->GetStatus().members_size(), 1);
  EXPECT_EQ(server_->GetStatus().calls_refused_auth(), 3u);
  ASSERT_TRUE(PushZeros(alice.get()).ok());
}

TEST_F(SecurityTest, ARestartedWorkerWithTheSameTokenReplacesItsOldMembership) {
  ServerSecurityOptions s;
  s.tokens_file = File("tokens");
  Start(s);
  auto first = Client(kAlice, false, "");
  ASSERT_TRUE(first->Join().ok());
  auto second = Client(kAlice, false, "");
  ASSERT_TRUE(second->Join().ok());
  ASSERT_EQ(server_->GetStatus().members_size(), 1);
  EXPECT_EQ(server_->GetStatus().members(0).worker_id(), second->worker_id());
  EXPECT_EQ(PushZeros(first.get()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SecurityTest, TlsServesClientsThatTrustItsCaAndNotPlaintextOnes) {
  ServerSecurityOptions s;
  s.tls_cert_file = File("server.pem");
  s.tls_key_file = File("server.key");
  Start(s);
  auto client = Client("", true, "");
  ASSERT_TRUE(client->Join().ok());
  auto ack = PushZeros(client.get());
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->result(), v1::PushAck::RESULT_APPLIED);
  EXPECT_EQ(Client("", false, "")->Status().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, MutualTlsRefusesAClientWithoutACertificate) {
  ServerSecurityOptions s;
  s.tls_cert_file = File("server.pem");
  s.tls_key_file = File("server.key");
  s.tls_client_ca_file = File("ca.pem");
  Start(s);
  auto anonymous = Client("", true, "")->Join();
  EXPECT_EQ(anonymous.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(anonymous.status().message()), HasSubstr("client certificate"));
  // A certificate from a CA the server does not trust fails the handshake itself.
  EXPECT_FALSE(Client("", true, "rogue")->Join().ok());
  EXPECT_TRUE(server_->GetStatus().members().empty());

  auto client = Client("", true, "client");
  ASSERT_TRUE(client->Join().ok());
  ASSERT_TRUE(PushZeros(client.get()).ok());
}

TEST_F(SecurityTest, MutualTlsAndTokensTogether) {
  ServerSecurityOptions s;
  s.tls_cert_file = File("server.pem");
  s.tls_key_file = File("server.key");
  s.tls_client_ca_file = File("ca.pem");
  s.tokens_file = File("tokens");
  Start(s);
  EXPECT_EQ(Client("", true, "client")->Join().status().code(), absl::StatusCode::kUnauthenticated);
  auto bob = Client(kBob, true, "client");
  ASSERT_TRUE(bob->Join().ok());
  EXPECT_TRUE(PushZeros(bob.get()).ok());
}

TEST(SecurityOptions, PlaintextOnANonLoopbackAddressMustBeAskedFor) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  options.listen_address = "0.0.0.0:50051";
  absl::Status s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("--allow_plaintext"));
  options.security.allow_plaintext = true;
  EXPECT_TRUE(options.Validate().ok());
  options.security.allow_plaintext = false;
  options.listen_address = "127.0.0.1:0";
  EXPECT_TRUE(options.Validate().ok());
  options.security.tls_client_ca_file = "ca.pem";
  EXPECT_THAT(std::string(options.Validate().message()), HasSubstr("needs TLS"));
}

TEST(SecurityOptions, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:5"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:5"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:5"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:5"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:5"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:5"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:5"));
  EXPECT_FALSE(IsLoopbackAddress("ps-0.ps:5"));
}

TEST_F(SecurityTest, APlaintextHealthPortAnswersHealthChecksAndNoParameterServerCall) {
  ServerSecurityOptions s;
  s.tls_cert_file = File("server.pem");
  s.tls_key_file = File("server.key");
  Start(s, "127.0.0.1:0");
  ASSERT_NE(server_->health_port(), 0);
  auto plain = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->health_port()),
                                   grpc::InsecureChannelCredentials());
  grpc::health::v1::HealthCheckResponse health;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest request;
    auto stub = grpc::health::v1::Health::NewStub(plain);
    ASSERT_TRUE(stub->Check(&context, request, &health).ok());
  }
  EXPECT_EQ(health.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  auto ps = v1::ParameterServer::NewStub(plain);
  for (int call = 0; call < 2; ++call) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status;
    if (call == 0) {
      v1::StatusResponse response;
      status = ps->Status(&context, v1::StatusRequest(), &response);
    } else {
      v1::JoinRequest request;
      request.set_worker_name("plaintext");
      v1::JoinResponse response;
      status = ps->Join(&context, request, &response);
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(status.error_message(), HasSubstr("TLS only"));
  }
  EXPECT_TRUE(server_->GetStatus().members().empty());
  EXPECT_TRUE(Client("", true, "")->Join().ok()) << "the TLS port serves as before";
}

TEST(SecurityOptions, APlaintextHealthPortOnANonLoopbackAddressNeedsTlsOrAllowPlaintext) {
  ServerOptions options = testing::SmallServerOptions(v1::AGGREGATION_MODE_SYNC, 1, 1);
  options.health_listen_address = "0.0.0.0:0";
  EXPECT_THAT(std::string(options.Validate().message()),
              HasSubstr("refusing to listen on 0.0.0.0:0 without TLS"));
  options.security.allow_plaintext = true;
  EXPECT_TRUE(options.Validate().ok());
}

}  // namespace
}  // namespace ps
