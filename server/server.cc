#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <tuple>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/chunking.h"
#include "common/codec.h"
#include "common/dq_sgd.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/outer_optimizer.h"

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
  if ((t.bits_policy() == v1::BITS_POLICY_DQSGD || t.pull_bits_policy() == v1::BITS_POLICY_DQSGD) &&
      (t.min_bits() < 2 || t.max_bits() > 8 || t.min_bits() > t.max_bits() || !(t.dq_beta() > 0))) {
    return absl::InvalidArgumentError("dqsgd needs 2 <= min_bits <= max_bits <= 8 and dq_beta > 0");
  }
  // Only updates use alpha: the downlink does not know how long the run is.
  if (t.bits_policy() == v1::BITS_POLICY_DQSGD && (!(t.dq_alpha() > 0) || t.dq_alpha() > 1)) {
    return bad("dq_alpha", t.dq_alpha(), "dqsgd needs 0 < dq_alpha <= 1");
  }
  const v1::EncodingParams& pull = t.pull_encoding();
  if (pull.encoding() == v1::ENCODING_QSGD || pull.encoding() == v1::ENCODING_FP16 ||
      pull.encoding() == v1::ENCODING_BF16) {
    PS_RETURN_IF_ERROR(ValidateEncodingParams(pull));
  } else if (pull.encoding() != v1::ENCODING_UNSPECIFIED && pull.encoding() != v1::ENCODING_FP32) {
    return absl::InvalidArgumentError("pull encoding must be fp32, fp16, bf16 or qsgd");
  }
  if (t.pull_bits_policy() == v1::BITS_POLICY_DQSGD && pull.encoding() != v1::ENCODING_QSGD) {
    return absl::InvalidArgumentError("pull_bits_policy = dqsgd needs pull_encoding = qsgd");
  }
  if (shard_count < 1 || shard_index >= shard_count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard_index %d must be in [0, shard_count %d)", shard_index, shard_count));
  }
  if (!(staleness_exponent >= 0))
    return bad("staleness_exponent", staleness_exponent, "must be >= 0");
  if (!(max_staleness > 0)) return bad("max_staleness", max_staleness, "must be > 0");
  if (!(max_update_ratio >= 0) || !std::isfinite(max_update_ratio)) {
    return bad("max_update_ratio", max_update_ratio, "must be >= 0 (0 = off)");
  }
  if (!(server_learning_rate > 0)) {
    return bad("server_learning_rate", server_learning_rate, "must be > 0");
  }
  if (t.update_kind() == v1::UPDATE_KIND_GRADIENT &&
      t.lr_schedule() == v1::LEARNING_RATE_SCHEDULE_COSINE && t.rounds() == 0) {
    return absl::InvalidArgumentError(
        "lr_schedule = cosine with update = gradient needs rounds > 0: the server applies the "
        "step size over the run and does not know the data set's size; set rounds, or "
        "lr_schedule = inverse_time or constant");
  }
  if (lease <= absl::ZeroDuration()) return absl::InvalidArgumentError("lease must be > 0");
  if (chunk_bytes < 1024 || chunk_bytes > kDefaultChunkBytes || chunk_bytes % 4 != 0) {
    return bad("chunk_bytes", chunk_bytes, "must be a multiple of 4 in [1024, 1048576]");
  }
  if (threads < 1) return bad("threads", threads, "must be >= 1");
  if (t.backup_workers() >= t.num_workers()) {
    return bad("backup_workers", t.backup_workers(), "must be < num_workers");
  }
  if (t.min_quorum() > t.num_workers()) {
    return bad("min_quorum", t.min_quorum(), "must be <= num_workers");
  }
  if (t.late_policy() != v1::LATE_POLICY_UNSPECIFIED && t.late_policy() != v1::LATE_POLICY_DROP &&
      t.late_policy() != v1::LATE_POLICY_FOLD) {
    return absl::InvalidArgumentError("late policy must be drop or fold");
  }
  if (max_concurrent_pushes < 0) return bad("max_concurrent_pushes", max_concurrent_pushes, ">= 0");
  if (max_pending_pulls < 0) return bad("max_pending_pulls", max_pending_pulls, "must be >= 0");
  if (idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("idle_timeout must be > 0");
  }
  if (max_streams_per_connection < 4) {
    return bad("max_streams_per_connection", max_streams_per_connection,
               "must be >= 4 (a worker has a push, a pull and a heartbeat in flight)");
  }
  if (stream_window_bytes < (64 << 10) || stream_window_bytes > (uint64_t{1} << 30)) {
    return bad("stream_window_kb", stream_window_bytes >> 10, "must be in [64, 1048576]");
  }
  if (transport_max_threads < 4) {
    return bad("transport_max_threads", transport_max_threads, "must be >= 4");
  }
  if (checkpoint_keep < 1) return bad("checkpoint_keep", checkpoint_keep, "must be >= 1");
  if (checkpoint_every < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("checkpoint interval must be >= 0");
  }
  if (checkpoint_dir.empty() &&
      (checkpoint_every_versions > 0 || checkpoint_every > absl::ZeroDuration())) {
    return absl::InvalidArgumentError("checkpoint intervals need a checkpoint directory");
  }
  PS_RETURN_IF_ERROR(ValidateSecurity(security, listen_address));
  // Without TLS the health port serves everything, so it is held to the same rule.
  if (!security.tls() && !health_listen_address.empty()) {
    PS_RETURN_IF_ERROR(ValidateSecurity(security, health_listen_address));
  }
  if (initial_model.has_value() && !initial_model_file.empty()) {
    return absl::InvalidArgumentError("give the initial model in memory or as a file, not both");
  }
  if (initial_model.has_value() && initial_model->values.size() != initial_model->layout.size()) {
    return absl::InvalidArgumentError("the initial model's values do not fill its layout");
  }
  if (max_model_bytes < sizeof(float)) {
    return bad("max_model_bytes", max_model_bytes, "must be >= 4");
  }
  if (outer.kind != OuterKind::kAverage && t.update_kind() == v1::UPDATE_KIND_GRADIENT) {
    return absl::InvalidArgumentError(
        "an outer optimizer works on model deltas: with --update=gradient the server's step is "
        "--server_learning_rate");
  }
  OuterOptimizerOptions outer_checked = outer;
  if (outer_checked.period == 0) outer_checked.period = std::max<int>(1, t.num_workers());
  PS_RETURN_IF_ERROR(ValidateOuterOptions(outer_checked, t.mode() == v1::AGGREGATION_MODE_SYNC));
  return absl::OkStatus();
}

namespace {

// The settings a checkpoint must share with the server resuming from it.
absl::Status CheckResumable(const v1::CheckpointHeader& h, const v1::TrainingConfig& now,
                            uint32_t shard_index, uint32_t shard_count) {
  const v1::TrainingConfig& then = h.config();
  auto differs = [](absl::string_view what, auto a, auto b) {
    return absl::FailedPreconditionError(
        absl::StrCat("the checkpoint was written with ", what, " = ", a, ", but this server has ",
                     b, "; start with the same settings, or with an empty --checkpoint_dir"));
  };
  if (then.model() != now.model()) return differs("model", then.model(), now.model());
  if (h.shard_index() != shard_index || h.shard_count() != shard_count) {
    return differs("shard", absl::StrCat(h.shard_index(), "/", h.shard_count()),
                   absl::StrCat(shard_index, "/", shard_count));
  }
  if (then.mode() != now.mode()) {
    return differs("mode", v1::AggregationMode_Name(then.mode()),
                   v1::AggregationMode_Name(now.mode()));
  }
  if (then.update_kind() != now.update_kind()) {
    return differs("update kind", v1::UpdateKind_Name(then.update_kind()),
                   v1::UpdateKind_Name(now.update_kind()));
  }
  return absl::OkStatus();
}

// The layout a checkpoint holds the model of; files from before layouts hold one flat tensor.
absl::StatusOr<Layout> CheckpointLayout(const v1::CheckpointHeader& h) {
  if (h.has_layout()) return Layout::FromProto(h.layout());
  return Layout::Flat(h.model_size());
}

}  // namespace

absl::StatusOr<std::optional<LoadedCheckpoint>> ParameterServer::LoadCheckpoint() const {
  if (options_.checkpoint_dir.empty()) return std::nullopt;
  PS_ASSIGN_OR_RETURN(std::optional<LoadedCheckpoint> loaded,
                      LoadNewestCheckpoint(options_.checkpoint_dir));
  if (!loaded.has_value()) return loaded;
  for (const std::string& problem : loaded->skipped) {
    LogError(absl::StrFormat("event=checkpoint_corrupt action=skipped error=\"%s\"", problem));
  }
  const v1::CheckpointHeader& h = loaded->checkpoint.header;
  PS_RETURN_IF_ERROR(
      CheckResumable(h, options_.training, options_.shard_index, options_.shard_count));
  const std::string then = h.outer_optimizer().empty() ? "average" : h.outer_optimizer();
  if (then != OuterKindName(options_.outer.kind)) {
    return absl::FailedPreconditionError(
        absl::StrCat(loaded->path, " was written with --outer_optimizer=", then,
                     ", but this server has ", OuterKindName(options_.outer.kind),
                     "; start with the same settings, or with an empty --checkpoint_dir"));
  }
  PS_ASSIGN_OR_RETURN(Layout layout, CheckpointLayout(h));
  if (!options_.layout.empty()) {
    if (absl::Status s = CheckSameLayout(options_.layout, layout, "--layout"); !s.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(loaded->path, ": ", s.message(),
                       "; start with the checkpoint's layout, or with an empty --checkpoint_dir"));
    }
  }
  const KeyRange range = ShardRange(layout.size(), options_.shard_index, options_.shard_count);
  if (h.shard_begin() != range.begin || h.shard_end() != range.end) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s holds shard range [%d, %d), this server [%d, %d)", loaded->path,
                        h.shard_begin(), h.shard_end(), range.begin, range.end));
  }
  return loaded;
}

namespace {

AggregatorOptions AggregatorOptionsFor(const ServerOptions& options) {
  const v1::TrainingConfig& config = options.training;
  AggregatorOptions a;
  a.mode = config.mode();
  a.update_kind = config.update_kind();
  a.num_workers = static_cast<int>(config.num_workers());
  a.staleness_exponent = options.staleness_exponent;
  a.max_staleness = options.max_staleness;
  a.max_update_ratio = options.max_update_ratio;
  a.server_step = StepSchedule{config.lr_schedule(), options.server_learning_rate,
                               config.lr_decay(), config.rounds()};
  a.backup_workers = static_cast<int>(config.backup_workers());
  a.round_deadline = config.round_deadline_ms() > 0 ? absl::Milliseconds(config.round_deadline_ms())
                                                    : absl::InfiniteDuration();
  a.min_quorum = std::max<int>(1, static_cast<int>(config.min_quorum()));
  a.late_policy =
      config.late_policy() == v1::LATE_POLICY_FOLD ? v1::LATE_POLICY_FOLD : v1::LATE_POLICY_DROP;
  a.outer = options.outer;
  // The handler thread leading a batch is one of --threads; the others help it apply.
  a.apply_threads = std::max(0, options.threads - 1);
  if (a.outer.period == 0) a.outer.period = std::max(1, a.num_workers);
  return a;
}

// Pushes received at once: --max_concurrent_pushes, or every worker's one push in flight plus
// slack for retries.
int MaxConcurrentPushes(const ServerOptions& options) {
  return options.max_concurrent_pushes > 0
             ? options.max_concurrent_pushes
             : 2 * static_cast<int>(options.training.num_workers()) + 4;
}

// Bounds on what one client can make the gRPC transport hold: memory and threads (a resource
// quota), streams per connection, and no compressed requests at all (a small gzip message could
// otherwise inflate to far more than the message limit before it is refused; our clients never
// compress: quantized payloads do not compress).
void ApplyTransportLimits(const ServerOptions& options, grpc::ServerBuilder* builder) {
  // Twice the shard, when its size is known before the model loads; else as for a 1 GiB shard.
  const Layout& layout =
      options.initial_model.has_value() ? options.initial_model->layout : options.layout;
  const uint64_t shard_bytes =
      layout.empty() ? uint64_t{1} << 30
                     : ShardRange(layout.size(), options.shard_index, options.shard_count).size() *
                           sizeof(float);
  // Plus a full window for every push that may be admitted (each may wait for room with its
  // window filled).
  const uint64_t pushes = MaxConcurrentPushes(options);
  grpc::ResourceQuota quota("ps-server");
  quota.Resize(options.transport_memory_bytes > 0 ? options.transport_memory_bytes
                                                  : (uint64_t{256} << 20) + 2 * shard_bytes +
                                                        pushes * options.stream_window_bytes);
  quota.SetMaxThreads(options.transport_max_threads);
  builder->SetResourceQuota(quota);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_streams_per_connection);
  builder->AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET,
                              1 << GRPC_COMPRESS_NONE);
  // Keepalive: workers ping every 20 s or so, also during long-polls with no data in flight;
  // answering them (rather than GOAWAY "too many pings") lets a worker tell a dead link from a
  // slow round.
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // A fixed receive window per stream instead of one grown by BDP probing: on loopback probing
  // grew it to about 24 MB, so each push waiting for room under --push_buffer_mb held that much
  // in the transport, and 16 of them filled the quota (gRPC then resets streams with
  // ENHANCE_YOUR_CALM). See docs/architecture.md, "The apply path".
  builder->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES,
                              static_cast<int>(options.stream_window_bytes));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ParameterServer>> ParameterServer::Create(
    const ServerOptions& options) {
  PS_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<ParameterServer> server(new ParameterServer(options));
  const v1::TrainingConfig& config = options.training;
  PS_ASSIGN_OR_RETURN(server->auth_, Authenticator::Create(options.security));
  PS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                      MakeServerCredentials(options.security));

  ServiceOptions service_options;
  service_options.training = config;
  service_options.shard_index = options.shard_index;
  service_options.shard_count = options.shard_count;
  service_options.max_pull_wait = options.max_pull_wait;
  service_options.chunk_bytes = options.chunk_bytes;
  // Every worker has at most one push and one pull in flight; the rest is slack for retries.
  const int k = static_cast<int>(config.num_workers());
  service_options.max_concurrent_pushes = MaxConcurrentPushes(options);
  // As many as the pushes that may be in at once; their bytes are bounded by the push budget.
  service_options.max_pooled_buffers =
      std::max(options.threads + 1, service_options.max_concurrent_pushes);
  service_options.max_pending_pulls =
      options.max_pending_pulls > 0 ? options.max_pending_pulls : 4 * k + 16;
  service_options.idle_timeout = options.idle_timeout;
  service_options.push_buffer_bytes = options.push_buffer_bytes;
  service_options.add_status = [s = server.get()](v1::StatusResponse* status) {
    s->AddDurabilityStatus(status);
  };
  service_options.required_layout = options.layout;
  service_options.max_model_bytes = options.max_model_bytes;
  service_options.install_uploaded =
      [s = server.get()](const Layout& layout, std::vector<float> values, uint64_t version) {
        return s->InstallUploaded(layout, std::move(values), version);
      };

  // Listen first, answering health checks with NOT_SERVING and calls with UNAVAILABLE, then load
  // the model (a large checkpoint takes a while): orchestrators see the process alive but not
  // ready.
  server->pool_ = std::make_unique<ThreadPool>(options.threads);
  server->handler_ = std::make_unique<ServiceHandler>(service_options);
  server->service_ = std::make_unique<ParameterServerService>(
      server->handler_.get(), server->pool_.get(), server->auth_.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &server->port_);
  if (!options.health_listen_address.empty()) {
    // Plaintext, for probes that cannot speak TLS: Authenticate refuses ps.v1 calls that arrive
    // without TLS when TLS is on, so this port serves health checks and reflection only.
    builder.AddListeningPort(options.health_listen_address, grpc::InsecureServerCredentials(),
                             &server->health_port_);
  }
  builder.RegisterService(server->service_.get());
  ApplyTransportLimits(options, &builder);
  // One chunk plus its header, never more: models of any size travel as many chunks.
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0 ||
      (!options.health_listen_address.empty() && server->health_port_ == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        options.health_listen_address.empty() ? "" : " and " + options.health_listen_address,
        " (address in use, or not an address of this host?)"));
  }
  server->SetServing(false);
  LogInfo(
      absl::StrFormat("event=loading port=%d health_port=%d", server->port_, server->health_port_));
  if (options.on_loading) options.on_loading(server->port_);

  PS_RETURN_IF_ERROR(server->LoadModel());
  server->housekeeping_ = std::thread([s = server.get()] { s->Housekeeping(); });
  server->checkpointer_ = std::thread([s = server.get()] { s->CheckpointWhenAsked(); });
  if (!options.metrics_listen.empty()) {
    PS_ASSIGN_OR_RETURN(server->metrics_,
                        MetricsEndpoint::Start(options.metrics_listen,
                                               [s = server.get()] { return s->CollectMetrics(); }));
    LogInfo(absl::StrFormat("event=metrics_listening address=%s port=%d", options.metrics_listen,
                            server->metrics_->port()));
  }
  // Serving also without a model: joins and the initial upload are what it waits for.
  server->SetServing(true);
  const Shard* shard = server->installed();
  LogInfo(absl::StrFormat(
      "event=listening address=%s port=%d mode=%s kind=%s K=%d H=%d shard=%d/%d %s tls=%s "
      "mtls=%s tokens=%s",
      options.listen_address, server->port_, v1::AggregationMode_Name(config.mode()),
      v1::UpdateKind_Name(config.update_kind()), config.num_workers(), config.local_steps(),
      options.shard_index, options.shard_count,
      shard == nullptr ? "model=none (waiting for a worker's initial model)"
                       : absl::StrFormat("params=%d range=[%d,%d) version=%d layout=%s",
                                         shard->layout.size(), shard->range.begin, shard->range.end,
                                         shard->store->version(), shard->layout.Fingerprint()),
      options.security.tls() ? "on" : "off",
      options.security.tls_client_ca_file.empty() ? "off" : "on",
      server->auth_->tokens_required() ? "on" : "off"));
  return server;
}

absl::Status ParameterServer::LoadModel() {
  PS_ASSIGN_OR_RETURN(std::optional<LoadedCheckpoint> resumed, LoadCheckpoint());
  absl::MutexLock lock(&install_mu_);
  if (resumed.has_value()) {
    const v1::CheckpointHeader& h = resumed->checkpoint.header;
    PS_ASSIGN_OR_RETURN(Layout layout, CheckpointLayout(h));
    Install(layout, std::move(resumed->checkpoint.model), std::move(resumed->checkpoint.broadcast),
            h.version(), &*resumed);
    LogInfo(absl::StrFormat("event=resumed path=%s version=%d epoch=%d skipped=%d layout=%s",
                            resumed->path, h.version(), h.epoch() + 1, resumed->skipped.size(),
                            layout.Fingerprint()));
    return absl::OkStatus();
  }
  std::optional<ModelValues> initial = options_.initial_model;
  if (!options_.initial_model_file.empty()) {
    PS_ASSIGN_OR_RETURN(initial,
                        ReadModelFile(options_.initial_model_file,
                                      options_.layout.empty() ? nullptr : &options_.layout));
  }
  if (!initial.has_value()) {
    handler_->AwaitModel();
    LogInfo(absl::StrFormat("event=awaiting_model layout=\"%s\"",
                            options_.layout.empty() ? "from the first upload"
                                                    : LogSafe(options_.layout.Summary(), 1024)));
    return absl::OkStatus();
  }
  if (!options_.layout.empty()) {
    PS_RETURN_IF_ERROR(CheckSameLayout(options_.layout, initial->layout, "--layout"));
  }
  const KeyRange range =
      ShardRange(initial->layout.size(), options_.shard_index, options_.shard_count);
  std::vector<float> values(initial->values.begin() + range.begin,
                            initial->values.begin() + range.end);
  Install(initial->layout, std::move(values), {}, 1, nullptr);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParameterServer::InstallUploaded(const Layout& layout,
                                                          std::vector<float> values,
                                                          uint64_t version) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return absl::UnavailableError("the server is shutting down");
  }
  absl::MutexLock lock(&install_mu_);
  if (const Shard* shard = installed(); shard != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrFormat("the server already has a model (version %d); join again to take it",
                        shard->store->version()));
  }
  // A worker's model from before this server lost its own keeps its version, so that workers
  // (and the other shards) go on from where they were.
  Install(layout, std::move(values), {}, std::max<uint64_t>(1, version), nullptr);
  checkpoint_now_ = !options_.checkpoint_dir.empty();
  WakeCheckpointer();
  LogInfo(absl::StrFormat("event=model_adopted layout=\"%s\" fingerprint=%s",
                          LogSafe(layout.Summary(), 1024), layout.Fingerprint()));
  return installed()->store->version();
}

void ParameterServer::Install(const Layout& layout, std::vector<float> values,
                              std::vector<float> broadcast, uint64_t version,
                              LoadedCheckpoint* resumed) {
  std::vector<std::vector<float>>* outer_state =
      resumed != nullptr ? &resumed->checkpoint.outer : nullptr;
  const v1::TrainingConfig& config = options_.training;
  auto shard = std::make_unique<Shard>();
  shard->layout = layout;
  shard->range = ShardRange(layout.size(), options_.shard_index, options_.shard_count);
  StoreOptions store_options;
  store_options.downlink = config.pull_encoding();
  if (config.pull_bits_policy() == v1::BITS_POLICY_DQSGD) {
    store_options.downlink_dqsgd =
        DqSgdOptionsFromConfig(config, config.pull_encoding().bucket_size());
  }
  store_options.initial_version = version;
  if (resumed != nullptr) {
    const v1::CheckpointHeader& h = resumed->checkpoint.header;
    absl::MutexLock lock(&durability_mu_);
    resumed_from_version_ = h.version();
    epoch_ = h.epoch() + 1;
    checkpoint_version_ = h.version();
    checkpoint_time_ = absl::FromUnixMillis(h.created_unix_ms());
  }
  shard->wait_list = std::make_unique<VersionWaitList>(store_options.initial_version);
  VersionWaitList* wait_list = shard->wait_list.get();
  shard->store = std::make_unique<ParameterStore>(
      std::move(values), store_options,
      [wait_list, this](uint64_t version) {
        wait_list->Publish(version);
        if (options_.checkpoint_every_versions > 0 && CheckpointDue()) WakeCheckpointer();
      },
      std::move(broadcast));
  // Ids start at a random point, so that an id from before a restart is never someone else's now.
  absl::BitGen random;
  shard->membership = std::make_unique<Membership>(
      config.num_workers(), options_.lease, Clock::Real(),
      absl::Uniform<uint64_t>(random, uint64_t{1} << 32, uint64_t{1} << 52));
  shard->aggregator = std::make_unique<Aggregator>(AggregatorOptionsFor(options_),
                                                   shard->store.get(), shard->membership.get());
  if (outer_state != nullptr) {
    const v1::CheckpointHeader& h = resumed->checkpoint.header;
    shard->aggregator->RestoreCounters(h.rounds_completed(), h.updates_applied());
    // The optimizer's state is restored bit for bit (its kind was checked by LoadCheckpoint).
    if (absl::Status s = shard->aggregator->RestoreOuter(h.outer_steps(), std::move(*outer_state));
        !s.ok()) {
      LogError(absl::StrFormat("event=outer_state_not_restored error=\"%s\"", s.ToString()));
    }
  }
  handler_->Attach(layout, shard->store.get(), shard->membership.get(), shard->aggregator.get(),
                   shard->wait_list.get());
  shard_ = std::move(shard);
  installed_.store(shard_.get(), std::memory_order_release);
}

ModelSnapshot ParameterServer::Model() const {
  const Shard* shard = installed();
  return shard == nullptr ? ModelSnapshot() : shard->store->Snapshot();
}

std::shared_ptr<const std::vector<float>> ParameterServer::TrueModel() const {
  const Shard* shard = installed();
  return shard == nullptr ? std::make_shared<const std::vector<float>>()
                          : shard->store->TrueModel();
}

std::string ParameterServer::RenderMetrics() const {
  return prometheus::TextSerializer().Serialize(CollectMetrics());
}

std::vector<prometheus::MetricFamily> ParameterServer::CollectMetrics() const {
  const v1::StatusResponse s = GetStatus();
  const v1::WireCounters& w = s.wire();
  const absl::Time now = absl::Now();
  MetricsText m;
  const Labels shard = {{"shard", absl::StrCat(options_.shard_index)}};
  m.Gauge("ps_model_version", "Current model version of this shard.", s.version(), shard)
      .Gauge("ps_model_parameters", "Parameters of this shard (0: no model yet).",
             static_cast<double>(installed() == nullptr ? 0 : installed()->range.size()), shard)
      .Counter("ps_rounds_total", "Versions published (sync rounds closed, or async updates).",
               s.rounds_completed())
      .Counter("ps_updates_applied_total", "Updates accepted.", s.updates_applied())
      .Counter("ps_updates_duplicate_total", "Retried pushes acknowledged without applying.",
               s.updates_duplicate())
      .Counter("ps_updates_late_folded_total", "Late sync updates folded into the next round.",
               s.updates_late_folded())
      .Counter("ps_update_batches_total",
               "Async batches applied (group commit; a batch of n publishes n versions).",
               s.update_batches())
      .Gauge("ps_push_buffer_bytes",
             "Payload bytes held by pushes being received (bounded by --push_buffer_mb).",
             static_cast<double>(s.push_buffer_bytes()))
      .Counter("ps_pushes_waited_for_buffer_total",
               "Pushes that waited for room under --push_buffer_mb before being read.",
               static_cast<double>(s.pushes_waited_for_buffer()));
  for (const auto& [reason, value] :
       std::vector<std::pair<std::string, uint64_t>>{{"stale", s.updates_refused_stale()},
                                                     {"invalid", s.updates_refused_invalid()},
                                                     {"limit", s.updates_refused_limit()},
                                                     {"unauthenticated", s.calls_refused_auth()}}) {
    m.Counter("ps_updates_refused_total",
              "Pushes and calls refused, by reason (stale includes late sync updates dropped).",
              static_cast<double>(value), {{"reason", reason}});
  }
  for (const auto& [how, value] :
       std::vector<std::pair<std::string, uint64_t>>{{"complete", s.rounds_closed_complete()},
                                                     {"quorum", s.rounds_closed_by_quorum()},
                                                     {"deadline", s.rounds_closed_by_deadline()},
                                                     {"abandoned", s.rounds_abandoned()}}) {
    m.Counter("ps_sync_rounds_total", "Sync rounds by how they ended.", static_cast<double>(value),
              {{"closed_by", how}});
  }
  // Empty histograms without a model, so that every series exists from the start.
  const Shard* installed_shard = installed();
  m.Histo("ps_update_staleness_rounds", "Staleness of accepted updates, in rounds.",
          installed_shard != nullptr ? installed_shard->aggregator->staleness()
                                     : Histogram(Aggregator::StalenessBuckets()).Get())
      .Histo("ps_round_wait_seconds", "Sync rounds: first update to close.",
             installed_shard != nullptr ? installed_shard->aggregator->round_wait()
                                        : Histogram(Aggregator::RoundWaitBuckets()).Get())
      .Histo("ps_pull_wait_seconds",
             "How long pulls waited for a newer version (the barrier, in sync mode).",
             handler_->pull_wait());
  for (const auto& [direction, wire, payload, raw] :
       std::vector<std::tuple<std::string, uint64_t, uint64_t, uint64_t>>{
           {"in", w.bytes_received(), w.payload_bytes_received(), w.raw_bytes_received()},
           {"out", w.bytes_sent(), w.payload_bytes_sent(), w.raw_bytes_sent()}}) {
    m.Counter("ps_bytes_total",
              "Bytes by direction: wire = serialized messages, payload = tensor bytes as sent "
              "(encoded), raw = what the tensors take as fp32.",
              static_cast<double>(wire), {{"direction", direction}, {"kind", "wire"}})
        .Counter("ps_bytes_total", "", static_cast<double>(payload),
                 {{"direction", direction}, {"kind", "payload"}})
        .Counter("ps_bytes_total", "", static_cast<double>(raw),
                 {{"direction", direction}, {"kind", "raw"}})
        .Gauge("ps_compression_ratio", "Raw fp32 bytes over wire bytes, by direction.",
               wire > 0 ? static_cast<double>(raw) / static_cast<double>(wire) : 0.0,
               {{"direction", direction}});
  }
  m.Gauge("ps_members", "Live workers.", s.members_size())
      .Gauge("ps_tracked_workers",
             "Workers whose last sequence number is kept (members that pushed; the soak checks it "
             "does not grow as workers come and go).",
             static_cast<double>(
                 installed_shard != nullptr ? installed_shard->aggregator->tracked_workers() : 0));
  for (const v1::MemberStatus& member : s.members()) {
    m.Gauge("ps_member_last_seen_seconds", "Time since each live worker was last heard from.",
            static_cast<double>(member.last_seen_ms_ago()) / 1000.0,
            {{"worker_id", absl::StrCat(member.worker_id())},
             {"rank", absl::StrCat(member.rank())},
             {"name", member.name()}});
  }
  m.Counter("ps_calls_cancelled_idle_total",
            "Pushes and pulls cancelled for making no progress within --idle_timeout.",
            static_cast<double>(s.calls_cancelled_idle()))
      .Gauge("ps_pushes_in_progress", "Pushes being received.", s.pushes_in_progress())
      .Gauge("ps_pulls_in_progress", "Pulls waiting or streaming.", s.pulls_in_progress())
      .Gauge("ps_checkpoint_version", "Version of the newest checkpoint (0: none).",
             s.checkpoint_version())
      .Gauge("ps_checkpoint_age_seconds", "Time since the newest checkpoint (NaN: none).",
             s.checkpoint_unix_ms() > 0
                 ? absl::ToDoubleSeconds(now - absl::FromUnixMillis(s.checkpoint_unix_ms()))
                 : std::nan(""))
      .Gauge("ps_last_eval_test_accuracy", "Test accuracy last reported by a worker.",
             s.last_eval().test_accuracy())
      .Gauge("ps_last_train_loss", "Training loss of the last accepted update.",
             s.last_train_loss())
      .Gauge("ps_uptime_seconds", "Time since this server started.",
             absl::ToDoubleSeconds(now - started_));
  return m.TakeFamilies();
}

void ParameterServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus("", serving);  // the server as a whole
  health->SetServingStatus(v1::ParameterServer::service_full_name(), serving);
}

std::string ParameterServer::address() const {
  const std::string& listen = options_.listen_address;
  return absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port_);
}

void ParameterServer::Housekeeping() {
  // Leases and round deadlines are checked a few times per period: a dead worker is dropped, and
  // a round past its deadline closed, at most a quarter period late.
  absl::Duration interval = std::min(absl::Seconds(1), options_.lease / 4);
  if (options_.training.round_deadline_ms() > 0) {
    interval = std::min(interval, absl::Milliseconds(options_.training.round_deadline_ms()) / 4);
  }
  interval = std::max(absl::Milliseconds(10), interval);
  while (true) {
    {
      absl::MutexLock lock(&housekeeping_mu_);
      housekeeping_mu_.AwaitWithTimeout(
          absl::Condition(
              +[](bool* woken) { return *woken; }, &housekeeping_woken_),
          interval);
      if (housekeeping_stopped_) return;
      housekeeping_woken_ = false;
    }
    service_->CancelIdleCalls();
    const Shard* shard = installed();
    if (shard == nullptr) continue;  // no model yet: no members, rounds or checkpoints
    std::vector<Member> expired = shard->membership->ExpireLeases();
    for (const Member& m : expired) {
      LogWarning(absl::StrFormat("event=lease_expired worker_id=%d rank=%d name=\"%s\" lease_ms=%d",
                                 m.id, m.rank, LogSafe(m.name),
                                 absl::ToInt64Milliseconds(options_.lease)));
      shard->aggregator->Forget(m.id);
    }
    shard->aggregator->MaybeCloseRound();
    if (checkpoint_now_ || CheckpointDue()) WakeCheckpointer();  // a write does not hold us up
    if (shard->membership->all_left() && !training_done_) {
      training_done_ = true;
      LogInfo(absl::StrFormat("event=training_done version=%d", shard->store->version()));
      if (options_.on_training_done) options_.on_training_done();
    }
  }
}

bool ParameterServer::CheckpointDue() const {
  const Shard* shard = installed();
  if (options_.checkpoint_dir.empty() || shard == nullptr) return false;
  const uint64_t version = shard->store->version();
  absl::MutexLock lock(&durability_mu_);
  // Versions are counted from the newest checkpoint, or from the initial model (version 1).
  const uint64_t since = std::max<uint64_t>(checkpoint_version_, 1);
  return version > checkpoint_version_ &&
         ((options_.checkpoint_every_versions > 0 &&
           version - since >= options_.checkpoint_every_versions) ||
          (options_.checkpoint_every > absl::ZeroDuration() &&
           absl::Now() - checkpoint_time_ >= options_.checkpoint_every));
}

void ParameterServer::WakeCheckpointer() {
  absl::MutexLock lock(&checkpointer_mu_);
  checkpointer_woken_ = true;
}

void ParameterServer::CheckpointWhenAsked() {
  while (true) {
    {
      absl::MutexLock lock(&checkpointer_mu_);
      checkpointer_mu_.Await(absl::Condition(
          +[](ParameterServer* s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return s->checkpointer_woken_ || s->checkpointer_stopped_;
          },
          this));
      if (checkpointer_stopped_) return;
      checkpointer_woken_ = false;
    }
    // Asked while the last write ran, it may no longer be due.
    if (!checkpoint_now_.exchange(false) && !CheckpointDue()) continue;
    if (absl::Status s = Checkpoint(); !s.ok()) {
      LogError(absl::StrFormat("event=checkpoint_failed error=\"%s\"", s.ToString()));
    }
  }
}

absl::Status ParameterServer::Checkpoint() {
  if (options_.checkpoint_dir.empty()) {
    return absl::FailedPreconditionError("no checkpoint directory configured");
  }
  const Shard* shard = installed();
  if (shard == nullptr) return absl::OkStatus();  // no model yet: nothing to keep
  absl::MutexLock writer(&checkpoint_writer_mu_);
  // The model and the outer optimizer's state of the same version.
  Aggregator::Snapshot snapshot = shard->aggregator->SnapshotForCheckpoint();
  const StoreState& state = snapshot.store;
  uint64_t epoch = 0;
  {
    absl::MutexLock lock(&durability_mu_);
    if (state.version <= checkpoint_version_) return absl::OkStatus();  // nothing new
    epoch = epoch_;
  }
  const absl::Time start = absl::Now();
  v1::CheckpointHeader h;
  h.set_version(state.version);
  h.set_shard_index(options_.shard_index);
  h.set_shard_count(options_.shard_count);
  h.set_model_size(shard->layout.size());
  h.set_shard_begin(shard->range.begin);
  h.set_shard_end(shard->range.end);
  *h.mutable_layout() = shard->layout.ToProto();
  h.set_outer_optimizer(OuterKindName(options_.outer.kind));
  h.set_outer_steps(snapshot.outer_steps);
  h.set_outer_buffers(static_cast<uint32_t>(snapshot.outer_buffers.size()));
  h.set_has_broadcast(state.broadcast != nullptr);
  *h.mutable_config() = options_.training;
  h.set_created_unix_ms(absl::ToUnixMillis(start));
  const AggregatorStats stats = shard->aggregator->stats();
  h.set_rounds_completed(stats.rounds_completed);
  h.set_updates_applied(stats.applied);
  h.set_epoch(epoch);
  if (options_.before_checkpoint_write_for_test) {
    options_.before_checkpoint_write_for_test(state.version);
  }
  // Written from the published (immutable) version itself: no copy of the model.
  CheckpointView checkpoint{h, *state.model, {}, {}};
  if (state.broadcast != nullptr) checkpoint.broadcast = *state.broadcast;
  for (const std::vector<float>& buffer : snapshot.outer_buffers)
    checkpoint.outer.push_back(buffer);
  PS_RETURN_IF_ERROR(
      WriteCheckpoint(options_.checkpoint_dir, checkpoint, options_.checkpoint_keep));
  {
    absl::MutexLock lock(&durability_mu_);
    checkpoint_version_ = state.version;
    checkpoint_time_ = start;
  }
  LogInfo(absl::StrFormat("event=checkpoint version=%d path=%s ms=%d", state.version,
                          CheckpointPath(options_.checkpoint_dir, state.version),
                          absl::ToInt64Milliseconds(absl::Now() - start)));
  return absl::OkStatus();
}

void ParameterServer::AddDurabilityStatus(v1::StatusResponse* status) const {
  absl::MutexLock lock(&durability_mu_);
  status->set_checkpoint_version(checkpoint_version_);
  status->set_checkpoint_unix_ms(
      checkpoint_time_ == absl::InfinitePast() ? 0 : absl::ToUnixMillis(checkpoint_time_));
  status->set_resumed_from_version(resumed_from_version_);
}

void ParameterServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  if (server_) SetServing(false);  // orchestrators stop routing here first
  const Shard* shard = installed();
  if (!housekeeping_.joinable()) {  // Create failed before the model was loaded
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now()));
    return;
  }
  LogInfo(
      absl::StrFormat("event=shutdown version=%d", shard == nullptr ? 0 : shard->store->version()));
  // Waiting pulls answer now instead of holding the shutdown up.
  if (shard != nullptr) shard->wait_list->Shutdown();
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  {
    absl::MutexLock lock(&housekeeping_mu_);
    housekeeping_stopped_ = true;
    housekeeping_woken_ = true;
  }
  if (housekeeping_.joinable()) housekeeping_.join();
  {
    absl::MutexLock lock(&checkpointer_mu_);
    checkpointer_stopped_ = true;
  }
  if (checkpointer_.joinable()) checkpointer_.join();  // a write under way ends first
  if (shard == nullptr) return;                        // no model: nothing to close or keep
  switch (shard->aggregator->FinishOpenRound()) {
    case RoundEnd::kClosed:
      LogInfo(
          absl::StrFormat("event=round_closed_at_shutdown version=%d", shard->store->version()));
      break;
    case RoundEnd::kAbandoned:
      LogWarning("event=round_abandoned_at_shutdown reason=below_min_quorum");
      break;
    case RoundEnd::kNoneOpen:
      break;
  }
  if (!options_.checkpoint_dir.empty()) {
    if (absl::Status s = Checkpoint(); !s.ok()) {
      LogError(absl::StrFormat("event=checkpoint_failed at=shutdown error=\"%s\"", s.ToString()));
    }
  }
}

ParameterServer::~ParameterServer() {
  metrics_.reset();  // its scrapes read the components below
  Shutdown();
  if (server_) server_->Wait();
  server_.reset();
  pool_.reset();  // runs what is still queued before the components below go away
}

absl::StatusOr<uint64_t> ExportCheckpoints(const std::vector<std::string>& checkpoint_dirs,
                                           const std::string& path) {
  Layout layout;
  std::vector<float> model;
  uint64_t version = 0;
  for (size_t i = 0; i < checkpoint_dirs.size(); ++i) {
    const std::string& dir = checkpoint_dirs[i];
    PS_ASSIGN_OR_RETURN(std::optional<LoadedCheckpoint> loaded, LoadNewestCheckpoint(dir));
    if (!loaded.has_value()) return absl::NotFoundError(absl::StrCat("no checkpoint in ", dir));
    const v1::CheckpointHeader& h = loaded->checkpoint.header;
    PS_ASSIGN_OR_RETURN(Layout shard_layout, CheckpointLayout(h));
    if (i == 0) {
      layout = shard_layout;
      model.resize(layout.size());
      version = h.version();
    } else if (shard_layout != layout) {
      return absl::FailedPreconditionError(
          absl::StrCat(loaded->path, " is of another model than ", checkpoint_dirs[0]));
    }
    if (h.shard_count() != checkpoint_dirs.size() || h.shard_index() != i) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s is shard %d of %d: give the checkpoint directories of all %d shards, in shard order",
          loaded->path, h.shard_index(), h.shard_count(), h.shard_count()));
    }
    if (h.shard_end() > layout.size() ||
        h.shard_end() - h.shard_begin() != loaded->checkpoint.model.size()) {
      return absl::DataLossError(absl::StrCat(loaded->path, ": its range does not fit the model"));
    }
    std::copy(loaded->checkpoint.model.begin(), loaded->checkpoint.model.end(),
              model.begin() + h.shard_begin());
    LogInfo(
        absl::StrFormat("event=export shard=%d path=%s version=%d", i, loaded->path, h.version()));
  }
  PS_RETURN_IF_ERROR(WriteModelNpz(path, layout, model));
  return version;
}

}  // namespace ps
