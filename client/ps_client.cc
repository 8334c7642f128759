#include "client/ps_client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunking.h"
#include "common/codec.h"
#include "common/files.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "rpc/grpc_status.h"

namespace ps {
namespace {

// The one status conversion (rpc/grpc_status.h), with the call and the server named.
absl::Status WithContext(const grpc::Status& status, absl::string_view what,
                         absl::string_view server) {
  const absl::Status converted = FromGrpcStatus(status);
  if (converted.ok()) return converted;
  return absl::Status(converted.code(),
                      absl::StrCat(what, " to ", server, ": ", converted.message()));
}

}  // namespace

PsClient::PsClient(const PsClientOptions& options) : options_(options) {}

void PsClient::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
}

absl::StatusOr<std::unique_ptr<PsClient>> PsClient::Create(const PsClientOptions& options) {
  if (options.servers.empty()) {
    return absl::InvalidArgumentError("no server address given (--servers)");
  }
  if (options.servers.size() > 1) {
    return absl::InvalidArgumentError(
        "a PsClient talks to one server shard; ShardedClient splits the model over several");
  }
  if (options.tls_ca_file.empty() &&
      (!options.tls_cert_file.empty() || !options.tls_key_file.empty())) {
    return absl::InvalidArgumentError("a client certificate needs TLS: give --tls_ca as well");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("mutual TLS needs both --tls_cert and --tls_key");
  }
  std::unique_ptr<PsClient> client(new PsClient(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Keepalive pings tell a dead link (the call fails, UNAVAILABLE, and is retried) from a slow
  // round, also during long-polls with no data in flight; the server's ping policy accepts them.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Once a link is back, reconnect within seconds, not after gRPC's default backoff of minutes.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // A shard that comes back at another address under the same name (a rescheduled Kubernetes
  // pod) is found within about a second: gRPC looks the name up again when a connection fails,
  // but by default at most every 30 s, and the first look-up after a failure often still sees
  // the old address.
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  // A connection of its own, as a worker in its own process has: gRPC would otherwise share one
  // between every client of a process with the same address and arguments, and the server
  // limits streams per connection (--max_streams_per_connection), so that 64 sessions in one
  // process stalled a sync round: the pulls waiting for it held the streams its last pushes
  // needed (bench/soak.py found it).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    PS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadSmallFile(options.tls_ca_file));
    if (!options.tls_cert_file.empty()) {
      PS_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadSmallFile(options.tls_cert_file));
      PS_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadSmallFile(options.tls_key_file));
    }
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  auto channel = grpc::CreateCustomChannel(options.servers[0], credentials, args);
  client->stub_ = v1::ParameterServer::NewStub(channel);
  return client;
}

PsClient::~PsClient() { StopHeartbeats(); }

template <typename Attempt>
grpc::Status PsClient::WithRetries(absl::string_view what, Attempt attempt,
                                   grpc::StatusCode also_retry) {
  Backoff backoff(options_.backoff);
  const absl::Time give_up = absl::Now() + options_.retry_budget;
  while (true) {
    grpc::Status status = attempt();
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE && status.error_code() != also_retry) {
      return status;
    }
    const absl::Duration delay = backoff.NextDelay();
    if (absl::Now() + delay > give_up) return status;
    LogWarning(absl::StrFormat("event=retry call=%s server=%s delay_ms=%d error=\"%s\"", what,
                               options_.servers[0], absl::ToInt64Milliseconds(delay),
                               status.error_message()));
    absl::SleepFor(delay);
  }
}

absl::StatusOr<v1::JoinResponse> PsClient::Join(std::optional<int> requested_rank,
                                                const Layout* layout) {
  v1::JoinRequest request;
  request.set_worker_name(options_.worker_name);
  request.set_requested_rank(requested_rank.value_or(options_.requested_rank));
  request.add_supported_encodings(v1::ENCODING_FP32);
  if (layout != nullptr) *request.mutable_layout() = layout->ToProto();
  v1::JoinResponse response;
  grpc::Status status = WithRetries(
      "Join",
      [&] {
        grpc::ClientContext context;
        Prepare(&context, options_.rpc_timeout);
        // Waits for the server to come up instead of failing at once.
        context.set_wait_for_ready(true);
        bytes_sent_ += request.ByteSizeLong();
        return stub_->Join(&context, request, &response);
        // ALREADY_EXISTS: our rank is still held, typically by our own previous process whose lease
        // has not run out yet; it frees up within the lease.
      },
      grpc::StatusCode::ALREADY_EXISTS);
  if (!status.ok()) return WithContext(status, "Join", options_.servers[0]);
  bytes_received_ += response.ByteSizeLong();
  worker_id_ = response.worker_id();
  lease_ms_ = static_cast<int64_t>(response.lease_ms());
  if (response.max_chunk_bytes() >= 1024) chunk_bytes_ = response.max_chunk_bytes();
  return response;
}

template <typename Request, typename Response>
absl::Status PsClient::CallIdempotent(absl::string_view what,
                                      grpc::Status (v1::ParameterServer::Stub::*method)(
                                          grpc::ClientContext*, const Request&, Response*),
                                      const Request& request, Response* response) {
  grpc::Status status = WithRetries(
      what,
      [&] {
        grpc::ClientContext context;
        Prepare(&context, options_.rpc_timeout);
        bytes_sent_ += request.ByteSizeLong();
        return (stub_.get()->*method)(&context, request, response);
      },
      grpc::StatusCode::DEADLINE_EXCEEDED);
  if (status.ok()) bytes_received_ += response->ByteSizeLong();
  return WithContext(status, what, options_.servers[0]);
}

absl::Status PsClient::Heartbeat(const v1::EvalReport* eval) {
  v1::HeartbeatRequest request;
  request.set_worker_id(worker_id_);
  if (eval != nullptr) *request.mutable_eval() = *eval;
  v1::HeartbeatResponse response;
  return CallIdempotent("Heartbeat", &v1::ParameterServer::Stub::Heartbeat, request, &response);
}

void PsClient::StartHeartbeats() {
  if (heartbeat_thread_.joinable()) return;
  stop_heartbeats_ = std::make_unique<absl::Notification>();
  heartbeat_thread_ = std::thread([this] {
    while (!stop_heartbeats_->WaitForNotificationWithTimeout(absl::Milliseconds(lease_ms_.load()) /
                                                             3)) {
      if (absl::Status s = Heartbeat(nullptr); !s.ok()) {
        LogWarning(absl::StrCat("event=heartbeat_failed error=\"", s.ToString(), "\""));
      }
    }
  });
}

void PsClient::StopHeartbeats() {
  if (!heartbeat_thread_.joinable()) return;
  stop_heartbeats_->Notify();
  heartbeat_thread_.join();
}

absl::Status PsClient::Leave() {
  StopHeartbeats();
  v1::LeaveRequest request;
  request.set_worker_id(worker_id_);
  v1::LeaveResponse response;  // empty: counting it adds nothing
  return CallIdempotent("Leave", &v1::ParameterServer::Stub::Leave, request, &response);
}

absl::StatusOr<v1::PushAck> PsClient::Push(v1::UpdateKind kind, uint64_t base_version,
                                           uint64_t sample_count, absl::Span<const float> values,
                                           double train_loss) {
  v1::EncodingParams fp32;
  fp32.set_encoding(v1::ENCODING_FP32);
  absl::MutexLock lock(&push_mu_);
  if (absl::Status s = EncodeInto(fp32, values, &push_buffer_); !s.ok()) return s;
  return PushLocked(kind, base_version, sample_count, fp32, push_buffer_, values.size(),
                    train_loss);
}

absl::StatusOr<v1::PushAck> PsClient::PushEncoded(v1::UpdateKind kind, uint64_t base_version,
                                                  uint64_t sample_count,
                                                  const v1::EncodingParams& encoding,
                                                  absl::string_view payload, uint64_t num_elements,
                                                  double train_loss, double learning_rate) {
  absl::MutexLock lock(&push_mu_);
  return PushLocked(kind, base_version, sample_count, encoding, payload, num_elements, train_loss,
                    learning_rate);
}

absl::StatusOr<v1::PushAck> PsClient::PushLocked(v1::UpdateKind kind, uint64_t base_version,
                                                 uint64_t sample_count,
                                                 const v1::EncodingParams& encoding,
                                                 absl::string_view payload, uint64_t num_elements,
                                                 double train_loss, double learning_rate) {
  v1::UpdateHeader header;
  header.set_learning_rate(learning_rate);
  header.set_worker_id(worker_id_);
  header.set_sequence(next_sequence_++);
  header.set_kind(kind);
  header.set_base_version(base_version);
  header.set_sample_count(sample_count);
  *header.mutable_encoding() = encoding;
  header.set_num_elements(num_elements);
  header.set_payload_bytes(payload.size());
  header.set_train_loss(train_loss);
  v1::PushAck ack;
  grpc::Status status = SendPush(header, payload, &ack);
  if (!status.ok()) return WithContext(status, "Push", options_.servers[0]);
  bytes_received_ += ack.ByteSizeLong();
  raw_sent_ += num_elements * sizeof(float);
  return ack;
}

absl::Status PsClient::UploadInitialModel(const Layout& layout, absl::Span<const float> values,
                                          uint64_t version) {
  v1::UpdateHeader header;
  header.set_kind(v1::UPDATE_KIND_INITIAL_MODEL);
  header.set_base_version(version);
  header.mutable_encoding()->set_encoding(v1::ENCODING_FP32);
  header.set_num_elements(values.size());
  header.set_payload_bytes(values.size() * sizeof(float));
  *header.mutable_layout() = layout.ToProto();
  const absl::string_view payload(reinterpret_cast<const char*>(values.data()),
                                  values.size() * sizeof(float));
  v1::PushAck ack;
  absl::MutexLock lock(&push_mu_);
  grpc::Status status = SendPush(header, payload, &ack);
  if (!status.ok()) return WithContext(status, "initial model upload", options_.servers[0]);
  bytes_received_ += ack.ByteSizeLong();
  raw_sent_ += payload.size();
  return absl::OkStatus();
}

grpc::Status PsClient::SendPush(const v1::UpdateHeader& header, absl::string_view payload,
                                v1::PushAck* ack_out) {
  const std::vector<ByteRange> ranges = ChunkRanges(payload.size(), chunk_bytes_);
  v1::PushAck& ack = *ack_out;
  return WithRetries(
      "Push",
      [&] {
        grpc::ClientContext context;
        Prepare(&context, options_.rpc_timeout);
        std::unique_ptr<grpc::ClientWriter<v1::UpdateChunk>> writer = stub_->Push(&context, &ack);
        v1::UpdateChunk chunk;
        for (size_t i = 0; i < ranges.size(); ++i) {
          chunk.Clear();
          if (i == 0) *chunk.mutable_header() = header;
          chunk.set_offset(ranges[i].offset);
          chunk.set_data(payload.data() + ranges[i].offset, ranges[i].size);
          bytes_sent_ += chunk.ByteSizeLong();
          payload_sent_ += ranges[i].size;
          if (header.kind() == v1::UPDATE_KIND_INITIAL_MODEL) upload_sent_ += chunk.ByteSizeLong();
          // A failed write means the server already finished the call; Finish says why.
          if (!writer->Write(chunk)) break;
        }
        writer->WritesDone();
        return writer->Finish();
      },
      grpc::StatusCode::DEADLINE_EXCEEDED);
}

absl::StatusOr<PullResult> PsClient::Pull(uint64_t have_version, absl::Duration wait,
                                          absl::Span<float> model) {
  v1::PullRequest request;
  request.set_worker_id(worker_id_);
  request.set_have_version(have_version);
  request.add_accept_encodings(v1::ENCODING_FP32);
  request.add_accept_encodings(v1::ENCODING_QSGD);
  request.add_accept_encodings(v1::ENCODING_FP16);
  request.add_accept_encodings(v1::ENCODING_BF16);
  request.set_max_wait_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(wait)));
  absl::MutexLock lock(&pull_mu_);
  // The lambdas below run with pull_mu_ held; the analysis cannot see that through them.
  PayloadAssembler* const assembler = &pull_assembler_;
  std::vector<float>* const scratch = &pull_scratch_;
  PullResult result;
  absl::Status stream_error;
  grpc::Status status = WithRetries(
      "Pull",
      [&] {
        grpc::ClientContext context;
        Prepare(&context, wait + options_.rpc_timeout);
        bytes_sent_ += request.ByteSizeLong();
        std::unique_ptr<grpc::ClientReader<v1::ModelChunk>> reader = stub_->Pull(&context, request);
        result = PullResult();
        uint64_t version = have_version;
        bool in_segment = false, full = false, deltas = false;
        v1::ModelHeader header;
        // Applies the segment just assembled: a full model straight into `model` (decoded only
        // after the payload checks out), a delta onto the scratch copy.
        auto finish_segment = [&]() -> absl::Status {
          if (absl::Status s = assembler->CheckComplete(); !s.ok()) return s;
          if (header.kind() == v1::ModelHeader::KIND_FULL) {
            if (absl::Status s = Decode(header.encoding(), assembler->payload(), model); !s.ok()) {
              return s;
            }
            full = true;
          } else {
            if (!deltas) scratch->assign(model.begin(), model.end());
            deltas = true;
            if (absl::Status s = DecodeAccumulate(header.encoding(), assembler->payload(), 1.0f,
                                                  absl::MakeSpan(*scratch));
                !s.ok()) {
              return s;
            }
          }
          version = header.version();
          return absl::OkStatus();
        };
        auto start_segment = [&](const v1::ModelHeader& next) -> absl::Status {
          header = next;
          if (header.kind() == v1::ModelHeader::KIND_UNCHANGED) {
            result.version = header.version();
            return absl::OkStatus();
          }
          const bool delta = header.kind() == v1::ModelHeader::KIND_DELTA;
          if ((!delta && header.kind() != v1::ModelHeader::KIND_FULL) || full ||
              header.num_elements() != model.size() ||
              (delta && header.base_version() != version)) {
            return absl::InternalError(absl::StrFormat(
                "unexpected segment: kind %d, %d elements, base version %d (model %d elements, at "
                "version %d)",
                header.kind(), header.num_elements(), header.base_version(), model.size(),
                version));
          }
          // The size is checked against the model before a byte is buffered.
          auto expected = EncodedSize(header.encoding(), model.size());
          if (!expected.ok()) return expected.status();
          if (*expected != header.payload_bytes()) {
            return absl::InternalError(absl::StrFormat(
                "server announced %d payload bytes; %s of %d "
                "elements takes %d",
                header.payload_bytes(), EncodingName(header.encoding()), model.size(), *expected));
          }
          assembler->Reset(header.payload_bytes(), kDefaultChunkBytes);
          in_segment = true;
          return absl::OkStatus();
        };
        v1::ModelChunk chunk;
        while (stream_error.ok() && reader->Read(&chunk)) {
          bytes_received_ += chunk.ByteSizeLong();
          payload_received_ += chunk.data().size();
          if (chunk.has_header()) {
            if (in_segment) stream_error = finish_segment();
            in_segment = false;
            if (stream_error.ok()) stream_error = start_segment(chunk.header());
          } else if (!in_segment) {
            stream_error = absl::InternalError("model chunk without a header");
          }
          if (stream_error.ok() && in_segment) {
            stream_error = assembler->Add(chunk.offset(), chunk.data());
          }
        }
        if (!stream_error.ok()) context.TryCancel();
        grpc::Status finished = reader->Finish();
        if (!finished.ok() || !stream_error.ok()) return finished;
        if (in_segment) stream_error = finish_segment();
        if (!stream_error.ok()) return finished;
        if (deltas) std::copy(scratch->begin(), scratch->end(), model.begin());
        result.changed = full || deltas;
        if (result.changed) {
          result.version = version;
          raw_received_ += model.size() * sizeof(float);  // what a plain fp32 pull would have moved
        }
        return finished;
      },
      grpc::StatusCode::DEADLINE_EXCEEDED);
  if (!stream_error.ok()) {
    return absl::InternalError(absl::StrCat("malformed model stream from ", options_.servers[0],
                                            ": ", stream_error.message()));
  }
  if (!status.ok()) return WithContext(status, "Pull", options_.servers[0]);
  return result;
}

absl::StatusOr<v1::StatusResponse> PsClient::Status() {
  v1::StatusResponse response;
  grpc::Status status = WithRetries(
      "Status",
      [&] {
        grpc::ClientContext context;
        Prepare(&context, options_.rpc_timeout);
        return stub_->Status(&context, v1::StatusRequest(), &response);
      },
      grpc::StatusCode::DEADLINE_EXCEEDED);
  if (!status.ok()) return WithContext(status, "Status", options_.servers[0]);
  return response;
}

ClientWireStats PsClient::wire() const {
  ClientWireStats s;
  s.bytes_sent = bytes_sent_;
  s.bytes_received = bytes_received_;
  s.payload_bytes_sent = payload_sent_;
  s.payload_bytes_received = payload_received_;
  s.raw_bytes_sent = raw_sent_;
  s.raw_bytes_received = raw_received_;
  s.upload_bytes_sent = upload_sent_;
  return s;
}

}  // namespace ps
