#include "server/server.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunking.h"
#include "common/codec.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace ps {

absl::Status ServerOptions::Validate() const {
  const v1::TrainingConfig& t = training;
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, ": ", want));
  };
  if (t.mode() != v1::AGGREGATION_MODE_SYNC && t.mode() != v1::AGGREGATION_MODE_ASYNC) {
    return absl::InvalidArgumentError("mode must be sync or async");
  }
  if (t.update_kind() != v1::UPDATE_KIND_MODEL_DELTA &&
      t.update_kind() != v1::UPDATE_KIND_GRADIENT) {
    return absl::InvalidArgumentError("update kind must be delta or gradient");
  }
  if (t.num_workers() < 1) return bad("num_workers", t.num_workers(), "must be >= 1");
  if (t.local_steps() < 1) return bad("local_steps", t.local_steps(), "must be >= 1");
  if (t.batch_size() < 1) return bad("batch_size", t.batch_size(), "must be >= 1");
  if (!(t.learning_rate() > 0) || !std::isfinite(t.learning_rate())) {
    return bad("learning_rate", t.learning_rate(), "must be > 0");
  }
  if (!(t.lr_decay() >= 0)) return bad("lr_decay", t.lr_decay(), "must be >= 0");
  if (t.rounds() == 0 && !(t.epochs() > 0)) {
    return absl::InvalidArgumentError("set rounds > 0 or epochs > 0");
  }
  if (t.allowed_encodings().empty()) return absl::InvalidArgumentError("no encoding allowed");
  const v1::EncodingParams& update = t.update_encoding();
  if (update.encoding() != v1::ENCODING_UNSPECIFIED) {
    PS_RETURN_IF_ERROR(ValidateEncodingParams(update));
    const auto& allowed = t.allowed_encodings();
    if (std::find(allowed.begin(), allowed.end(), update.encoding()) == allowed.end()) {
      return absl::InvalidArgumentError(absl::StrCat("update encoding ", EncodingName(update),
                                                     " is not among the allowed encodings"));
    }
  }
  if (t.bits_policy() == v1::BITS_POLICY_DQSGD &&
      (t.min_bits() < 2 || t.max_bits() > 8 || t.min_bits() > t.max_bits() || !(t.dq_beta() > 0) ||
       !(t.dq_alpha() > 0) || t.dq_alpha() > 1)) {
    return absl::InvalidArgumentError(
        "dqsgd needs 2 <= min_bits <= max_bits <= 8, dq_beta > 0 and 0 < dq_alpha <= 1");
  }
  const v1::EncodingParams& pull = t.pull_encoding();
  if (pull.encoding() == v1::ENCODING_QSGD) {
    PS_RETURN_IF_ERROR(ValidateEncodingParams(pull));
  } else if (pull.encoding() != v1::ENCODING_UNSPECIFIED && pull.encoding() != v1::ENCODING_FP32) {
    return absl::InvalidArgumentError("pull encoding must be fp32 or qsgd");
  }
  if (shard_count < 1 || shard_index >= shard_count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard_index %d must be in [0, shard_count %d)", shard_index, shard_count));
  }
  if (!(staleness_exponent >= 0))
    return bad("staleness_exponent", staleness_exponent, "must be >= 0");
  if (!(max_staleness > 0)) return bad("max_staleness", max_staleness, "must be > 0");
  if (!(server_learning_rate > 0)) {
    return bad("server_learning_rate", server_learning_rate, "must be > 0");
  }
  if (lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("lease must be > 0");
  if (chunk_bytes < 1024 || chunk_bytes > kDefaultChunkBytes || chunk_bytes % 4 != 0) {
    return bad("chunk_bytes", chunk_bytes, "must be a multiple of 4 in [1024, 1048576]");
  }
  if (threads < 1) return bad("threads", threads, "must be >= 1");
  return CreateModel(ModelSpecFromConfig(t)).status();
}

absl::StatusOr<std::vector<float>> ReadModelFile(const std::string& path, uint64_t size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  const uint64_t bytes = static_cast<uint64_t>(in.tellg());
  if (bytes != size * sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has %d bytes; a model of %d float32 values needs exactly %d", path,
                        bytes, size, size * sizeof(float)));
  }
  std::vector<float> values(size);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(bytes));
  if (!in) return absl::DataLossError(absl::StrCat("error reading ", path));
  for (uint64_t i = 0; i < size; ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: value %d (byte %d) is not finite", path, i, i * sizeof(float)));
    }
  }
  return values;
}

absl::StatusOr<std::unique_ptr<ParameterServer>> ParameterServer::Create(
    const ServerOptions& options) {
  PS_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<ParameterServer> server(new ParameterServer(options));
  const v1::TrainingConfig& config = options.training;

  PS_ASSIGN_OR_RETURN(std::unique_ptr<ps::Model> model, CreateModel(ModelSpecFromConfig(config)));
  const uint64_t model_size = static_cast<uint64_t>(model->num_parameters());
  std::vector<float> full;
  if (options.initial_model_file.empty()) {
    full.resize(model_size);
    model->Initialize(options.model_seed, absl::MakeSpan(full));
  } else {
    PS_ASSIGN_OR_RETURN(full, ReadModelFile(options.initial_model_file, model_size));
  }
  // Shard i of S owns [i*d/S, (i+1)*d/S): contiguous key ranges that differ by at most one.
  ServiceOptions service_options;
  service_options.training = config;
  service_options.model_size = model_size;
  service_options.shard_begin = model_size * options.shard_index / options.shard_count;
  service_options.shard_end = model_size * (options.shard_index + 1) / options.shard_count;
  service_options.shard_index = options.shard_index;
  service_options.shard_count = options.shard_count;
  service_options.max_pull_wait = options.max_pull_wait;
  service_options.chunk_bytes = options.chunk_bytes;
  service_options.max_pooled_buffers = options.threads + 1;
  std::vector<float> shard(full.begin() + service_options.shard_begin,
                           full.begin() + service_options.shard_end);
  full = {};

  server->wait_list_ = std::make_unique<VersionWaitList>(/*initial_version=*/1);
  VersionWaitList* wait_list = server->wait_list_.get();
  StoreOptions store_options;
  store_options.downlink = config.pull_encoding();
  server->store_ = std::make_unique<ParameterStore>(
      std::move(shard), store_options,
      [wait_list](uint64_t version) { wait_list->Publish(version); });
  server->membership_ =
      std::make_unique<Membership>(config.num_workers(), options.lease, Clock::Real());
  AggregatorOptions aggregator_options;
  aggregator_options.mode = config.mode();
  aggregator_options.update_kind = config.update_kind();
  aggregator_options.num_workers = static_cast<int>(config.num_workers());
  aggregator_options.staleness_exponent = options.staleness_exponent;
  aggregator_options.max_staleness = options.max_staleness;
  aggregator_options.server_learning_rate = options.server_learning_rate;
  server->aggregator_ = std::make_unique<Aggregator>(aggregator_options, server->store_.get(),
                                                     server->membership_.get());
  server->pool_ = std::make_unique<ThreadPool>(options.threads);
  server->service_ = std::make_unique<ParameterServerService>(
      service_options, server->store_.get(), server->membership_.get(), server->aggregator_.get(),
      server->wait_list_.get(), server->pool_.get());

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(server->service_.get());
  // One chunk plus its header, never more: models of any size travel as many chunks.
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen_address,
                     " (address in use, or not an address of this host?)"));
  }
  server->housekeeping_ = std::thread([s = server.get()] { s->Housekeeping(); });
  LogInfo(absl::StrFormat(
      "event=listening address=%s port=%d mode=%s kind=%s K=%d H=%d model=%s params=%d shard=%d/%d "
      "range=[%d,%d)",
      options.listen_address, server->port_, v1::AggregationMode_Name(config.mode()),
      v1::UpdateKind_Name(config.update_kind()), config.num_workers(), config.local_steps(),
      config.model(), model_size, options.shard_index, options.shard_count,
      service_options.shard_begin, service_options.shard_end));
  return server;
}

std::string ParameterServer::address() const {
  const std::string& listen = options_.listen_address;
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port_);
}

void ParameterServer::Housekeeping() {
  // Leases are checked a few times per lease period: a dead worker is dropped at most a quarter
  // lease late.
  const absl::Duration interval =
      std::min(absl::Seconds(1), std::max(absl::Milliseconds(10), options_.lease / 4));
  while (!stop_housekeeping_.WaitForNotificationWithTimeout(interval)) {
    std::vector<Member> expired = membership_->ExpireLeases();
    for (const Member& m : expired) {
      LogWarning(absl::StrFormat("event=lease_expired worker_id=%d rank=%d name=%s lease_ms=%d",
                                 m.id, m.rank, m.name, absl::ToInt64Milliseconds(options_.lease)));
    }
    if (!expired.empty()) aggregator_->MaybeCloseRound();
    if (membership_->all_left() && !training_done_) {
      training_done_ = true;
      LogInfo(absl::StrFormat("event=training_done version=%d", store_->version()));
      if (options_.on_training_done) options_.on_training_done();
    }
  }
}

void ParameterServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  LogInfo(absl::StrFormat("event=shutdown version=%d", store_->version()));
  wait_list_->Shutdown();  // waiting pulls answer now instead of holding the shutdown up
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  stop_housekeeping_.Notify();
  if (housekeeping_.joinable()) housekeeping_.join();
}

ParameterServer::~ParameterServer() {
  Shutdown();
  if (server_) server_->Wait();
  server_.reset();
  pool_.reset();  // runs what is still queued before the components below go away
}

}  // namespace ps
