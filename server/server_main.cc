// ps-server: serves one shard of the global model to ps-worker processes.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "app/enum_flags.h"
#include "app/env_flags.h"
#include "app/malloc_tuning.h"
#include "app/shard_index.h"
#include "app/stop_signals.h"
#include "common/codec.h"
#include "common/json_writer.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port to listen on; port 0 lets the kernel pick one (see --port_file). Use "
          "0.0.0.0:PORT to accept workers from other machines.");
ABSL_FLAG(std::string, health_listen, "",
          "host:port of a second, plaintext port that serves grpc.health.v1 (and reflection) only, "
          "for probes that cannot speak TLS, such as Kubernetes' gRPC probes; \"\" = none.");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound port is written to this file once listening.");
ABSL_FLAG(
    ps::v1::AggregationMode, mode, ps::v1::AGGREGATION_MODE_SYNC,
    "sync: a round closes when every live worker pushed, then the server applies the "
    "sample-weighted average. async: each update is applied on arrival, weighted by staleness.");
ABSL_FLAG(ps::v1::UpdateKind, update, ps::v1::UPDATE_KIND_MODEL_DELTA,
          "delta: workers push their model change every --local_steps steps (Local SGD). gradient: "
          "workers push a gradient every step and the server applies --server_learning_rate.");
ABSL_FLAG(int, num_workers, 4,
          "K: workers that train (data is split K ways; sync rounds start once K joined).");
ABSL_FLAG(int, local_steps, 8, "H: local SGD steps between pushes (delta mode).");
ABSL_FLAG(std::string, layout, "",
          "The model's layout: a file listing its tensors, one \"name dim dim ...\" per line, or "
          "JSON ({\"tensors\": [{\"name\": ..., \"shape\": [...]}]}). Workers with another "
          "layout are refused. \"\" = from --init_model (.npz), or from the first worker's.");
ABSL_FLAG(uint64_t, model_size, 0,
          "The model is one flat tensor of this many float32 values (instead of --layout).");
ABSL_FLAG(std::string, init_model, "",
          "Initial values: an .npz (one array per tensor; alone, it also gives the layout), an "
          ".npy, or raw little-endian float32 of the whole model. \"\" = the first worker "
          "uploads its own (unless a checkpoint is resumed).");
ABSL_FLAG(uint64_t, max_model_mb, 16384,
          "Largest part of an uploaded initial model this shard accepts, in MiB.");
ABSL_FLAG(std::string, export_model, "",
          "Write the model of the newest valid checkpoint in --checkpoint_dir (comma-separated: "
          "one directory per shard, in shard order) to this .npz, one array per tensor, and "
          "exit.");
namespace ps {
// --outer_optimizer: a name ParseOuterKind knows. "nesterov" is a preset (sgd with Nesterov's
// momentum) rather than a kind, so the flag keeps the name; the flags library checks it before
// main runs.
struct OuterOptimizerName {
  std::string name;
};
bool AbslParseFlag(absl::string_view text, OuterOptimizerName* out, std::string* error) {
  if (absl::Status s = ParseOuterKind(text).status(); !s.ok()) {
    *error = std::string(s.message());
    return false;
  }
  out->name = std::string(text);
  return true;
}
std::string AbslUnparseFlag(const OuterOptimizerName& value) { return value.name; }
}  // namespace ps

ABSL_FLAG(ps::OuterOptimizerName, outer_optimizer, {"average"},
          "Delta mode: what the server does with a round's average change (docs/algorithms.md "
          "section 8). average (x += D_avg); nesterov or sgd (DiLoCo: outer SGD with momentum on "
          "-D_avg); slowmo; fedadam; async: average or delayed_nesterov.");
ABSL_FLAG(double, outer_lr, -1,
          "Outer step size (slowmo: alpha); -1 = the rule's default (nesterov/sgd 0.7, slowmo 1, "
          "fedadam 0.1, delayed_nesterov 1).");
ABSL_FLAG(double, outer_momentum, -1,
          "Outer momentum (slowmo: beta); -1 = the rule's default (nesterov/sgd 0.9, slowmo 0.5, "
          "delayed_nesterov 0.9).");
ABSL_FLAG(double, adam_beta1, 0.9, "fedadam: beta1.");
ABSL_FLAG(double, adam_beta2, 0.99, "fedadam: beta2.");
ABSL_FLAG(double, adam_tau, 1e-9, "fedadam: tau (added to sqrt(v)).");
ABSL_FLAG(int, outer_period, 0, "delayed_nesterov: updates per momentum step; 0 = --num_workers.");
ABSL_FLAG(std::string, model, "softmax",
          "Built-in worker model (passed on to ps-worker): softmax (multinomial logistic), "
          "logistic (binary) or mlp.");
ABSL_FLAG(int, input_dim, 784, "Built-in model: features per example (784 for Fashion-MNIST).");
ABSL_FLAG(int, num_classes, 10, "Built-in model: classes (2 for logistic).");
ABSL_FLAG(int, hidden_units, 128, "Built-in model: hidden ReLU units (mlp).");
ABSL_FLAG(double, l2, 0.0, "L2 regularisation: (l2/2)*||weights||^2 is added to the loss.");
ABSL_FLAG(double, learning_rate, 0.2, "Workers' initial SGD step size.");
ABSL_FLAG(ps::v1::LearningRateSchedule, lr_schedule, ps::v1::LEARNING_RATE_SCHEDULE_COSINE,
          "constant, inverse_time (lr/(1+decay*t)) or cosine (over the whole run); t counts global "
          "steps.");
ABSL_FLAG(double, lr_decay, 0.0, "decay of the inverse_time schedule.");
ABSL_FLAG(int, batch_size, 32, "Mini-batch size of each worker.");
ABSL_FLAG(int64_t, rounds, 0, "Rounds (pushes) per worker; 0 = derived from --epochs.");
ABSL_FLAG(double, epochs, 10.0,
          "Passes over the training set by all workers together (if --rounds is 0).");
ABSL_FLAG(int, eval_every, 50,
          "Rounds between test-set evaluations on the workers; 0 = only at the end.");
ABSL_FLAG(uint64_t, data_seed, 1,
          "Seed of data partitioning and shuffling (same on every worker).");
ABSL_FLAG(ps::v1::Partition, partition, ps::v1::PARTITION_IID,
          "iid, or label_sorted (each worker sees few classes).");
ABSL_FLAG(std::string, encodings, "fp32,fp16,bf16,qsgd,sign",
          "Comma-separated update encodings the server accepts (workers may pick among them).");
ABSL_FLAG(ps::v1::Encoding, update_encoding, ps::v1::ENCODING_FP32,
          "How workers encode their updates: fp32, fp16 or bf16 (16-bit floats, rounded to "
          "nearest even), qsgd (bit-packed stochastic quantizer) or sign (1-bit scaled sign; use "
          "with --error_feedback).");
ABSL_FLAG(int, bits, 4,
          "qsgd: bits per coordinate, sign included (2..8), for --bits_policy=fixed.");
ABSL_FLAG(int, bucket_size, 512, "qsgd and sign: coordinates per scale.");
ABSL_FLAG(ps::v1::QuantScaling, scaling, ps::v1::QUANT_SCALING_MAX_ABS,
          "qsgd: bucket scale, max_abs or l2.");
ABSL_FLAG(ps::v1::BitsPolicy, bits_policy, ps::v1::BITS_POLICY_FIXED,
          "qsgd: fixed (--bits), or dqsgd (bits from each update's norm and the steps left).");
ABSL_FLAG(int, min_bits, 2, "dqsgd: fewest bits.");
ABSL_FLAG(int, max_bits, 8, "dqsgd: most bits.");
ABSL_FLAG(double, dq_beta, 4.0, "dqsgd: relative error budget; larger sends fewer bits.");
ABSL_FLAG(
    double, dq_alpha, 1.0,
    "dqsgd: contraction per message; below 1 gives fewer bits early and more as steps run out.");
ABSL_FLAG(bool, error_feedback, true,
          "Workers carry what quantization dropped into the next message.");
ABSL_FLAG(ps::v1::Encoding, pull_encoding, ps::v1::ENCODING_FP32,
          "How new versions go to workers: fp32 (the full model), or deltas of the broadcast model "
          "with error feedback as qsgd (quantized), fp16 or bf16; workers too far behind get the "
          "full model.");
ABSL_FLAG(int, pull_bits, 4,
          "qsgd pulls: bits per coordinate (2..8), for --pull_bits_policy=fixed.");
ABSL_FLAG(ps::v1::BitsPolicy, pull_bits_policy, ps::v1::BITS_POLICY_FIXED,
          "qsgd pulls: fixed (--pull_bits), or dqsgd (each delta's bits from its norm against the "
          "first deltas', within --min_bits..--max_bits with --dq_beta).");
ABSL_FLAG(uint64_t, seed, 1,
          "Built-in model: seed of its initial values (the first ps-worker uploads them).");
ABSL_FLAG(std::string, shard_index, "",
          "This server's shard of the model's key range (0..shard_count-1); \"\" = the ordinal at "
          "the end of $POD_NAME (a Kubernetes StatefulSet pod, ps-server-<i>), or 0 without it.");
ABSL_FLAG(int, shard_count, 1, "Number of server shards the model is split over.");
ABSL_FLAG(double, staleness_exponent, 0.5, "async: weight s(tau) = tau^-a for tau > 1 round.");
ABSL_FLAG(double, max_staleness, 4.0, "async: updates more than this many rounds old are refused.");
ABSL_FLAG(double, server_learning_rate, 0.1,
          "gradient mode: the server's initial step size; it follows --lr_schedule (cosine over "
          "--rounds, which gradient mode then needs).");
ABSL_FLAG(absl::Duration, lease, absl::Seconds(30), "A worker silent for this long is dropped.");
ABSL_FLAG(absl::Duration, max_pull_wait, absl::Seconds(30),
          "Longest a Pull long-polls before answering 'unchanged'.");
ABSL_FLAG(int, chunk_bytes, 1 << 20, "Payload bytes per streamed message (max 1 MiB).");
ABSL_FLAG(int, threads, 2, "Threads that decode and apply updates.");
ABSL_FLAG(int, backup_workers, 0,
          "sync: b backup workers; a round closes at the first num_workers - b updates and the "
          "rest are late (Chen et al. 2016).");
ABSL_FLAG(absl::Duration, round_deadline, absl::ZeroDuration(),
          "sync: once this long has passed since a round's first update, the round closes with "
          "whatever arrived if that is at least --min_quorum updates; 0 = no deadline.");
ABSL_FLAG(int, min_quorum, 1,
          "sync: updates a round needs to close at its deadline, or at shutdown.");
ABSL_FLAG(ps::v1::LatePolicy, late_policy, ps::v1::LATE_POLICY_DROP,
          "sync: an update for a round that already closed is dropped (the worker is told and "
          "pulls), or fold-ed into the open round with the staleness weight.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Write checkpoints here and resume from the newest valid one at start; \"\" = none.");
ABSL_FLAG(uint64_t, checkpoint_every_versions, 0, "Checkpoint every N versions; 0 = not by count.");
ABSL_FLAG(absl::Duration, checkpoint_every, absl::Seconds(60),
          "Checkpoint at least this often while the model changes; 0 = not by time.");
ABSL_FLAG(int, checkpoint_keep, 2, "Checkpoints kept (the newest ones).");
ABSL_FLAG(int, max_concurrent_pushes, 0,
          "Pushes received at once (each holds a shard-sized buffer); 0 = 2 * num_workers + 4.");
ABSL_FLAG(uint64_t, push_buffer_mb, 256,
          "Payload MB the pushes being received may buffer at once; past it a push waits, its "
          "client's stream stalled, until earlier ones are applied (one push always goes in).");
ABSL_FLAG(int, max_pending_pulls, 0,
          "Pulls waiting or streaming at once; 0 = 4 * num_workers + 16.");
ABSL_FLAG(double, max_update_ratio, 0.0,
          "Refuse an update that would change a coordinate by more than this many times the "
          "model's largest |coordinate| (at least 1); 0 = off.");
ABSL_FLAG(absl::Duration, idle_timeout, absl::Seconds(60),
          "A push that receives nothing, or a pull whose client reads nothing, for this long is "
          "cancelled and frees its place.");
ABSL_FLAG(uint64_t, stream_window_kb, 4096,
          "HTTP/2 receive window per stream, in KiB: a push moves at most this per round trip "
          "(4 MiB in 50 ms: 670 Mbit/s) and one waiting for room holds at most this.");
ABSL_FLAG(uint64_t, transport_memory_mb, 0,
          "Memory the gRPC transport may hold (resource quota); 0 = 256 + twice the shard's MB.");
ABSL_FLAG(int, max_streams_per_connection, 32,
          "Concurrent HTTP/2 streams one connection may open.");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (chain): turns TLS on.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA: clients must present a certificate it signed (mutual TLS).");
ABSL_FLAG(std::string, tokens_file, "",
          "File of \"identity token\" lines: every call must carry one of the tokens "
          "(authorization: Bearer), and a worker may act only as the identity it joined as.");
ABSL_FLAG(bool, allow_plaintext, false,
          "Allow listening without TLS on an address other than loopback.");
ABSL_FLAG(
    std::string, metrics_listen, "",
    "host:port of the Prometheus endpoint (GET /metrics, plain HTTP); \"\" = off. Port 0: the "
    "kernel's choice (see --metrics_port_file).");
ABSL_FLAG(std::string, metrics_port_file, "", "If set, the metrics port is written here.");
ABSL_FLAG(std::string, summary_json, "", "Write a JSON run summary here at exit.");
ABSL_FLAG(bool, exit_when_done, false, "Exit once K workers joined and all of them left again.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "Time in-flight calls get at shutdown.");

namespace ps {
namespace {

absl::StatusOr<Layout> LayoutFromFlags() {
  const std::string file = absl::GetFlag(FLAGS_layout);
  const uint64_t size = absl::GetFlag(FLAGS_model_size);
  if (!file.empty() && size > 0) {
    return absl::InvalidArgumentError("give --layout or --model_size, not both");
  }
  if (!file.empty()) return Layout::ReadFile(file);
  if (size > 0) return Layout::Flat(size);
  return Layout();
}

absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  o.listen_address = absl::GetFlag(FLAGS_listen);
  o.health_listen_address = absl::GetFlag(FLAGS_health_listen);
  v1::TrainingConfig& t = o.training;
  t.set_mode(absl::GetFlag(FLAGS_mode));
  t.set_update_kind(absl::GetFlag(FLAGS_update));
  t.set_lr_schedule(absl::GetFlag(FLAGS_lr_schedule));
  t.set_partition(absl::GetFlag(FLAGS_partition));
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_encodings), ',', absl::SkipEmpty())) {
    auto e = ParseEncoding(name);
    if (!e.ok()) return e.status();
    t.add_allowed_encodings(*e);
  }
  const v1::Encoding update_encoding = absl::GetFlag(FLAGS_update_encoding);
  const v1::QuantScaling scaling = absl::GetFlag(FLAGS_scaling);
  const v1::BitsPolicy policy = absl::GetFlag(FLAGS_bits_policy);
  const v1::Encoding pull_encoding = absl::GetFlag(FLAGS_pull_encoding);
  if (pull_encoding == v1::ENCODING_SIGN) {
    return absl::InvalidArgumentError(
        "--pull_encoding=sign: pulls are fp32, or deltas as qsgd, fp16 or bf16");
  }
  const v1::BitsPolicy pull_policy = absl::GetFlag(FLAGS_pull_bits_policy);
  v1::EncodingParams* update = t.mutable_update_encoding();
  update->set_encoding(update_encoding);
  if (update_encoding != v1::ENCODING_FP32)
    update->set_bucket_size(absl::GetFlag(FLAGS_bucket_size));
  if (update_encoding == v1::ENCODING_QSGD) {
    update->set_bits(absl::GetFlag(FLAGS_bits));
    update->set_scaling(scaling);
  }
  t.set_bits_policy(policy);
  t.set_min_bits(absl::GetFlag(FLAGS_min_bits));
  t.set_max_bits(absl::GetFlag(FLAGS_max_bits));
  t.set_dq_beta(static_cast<float>(absl::GetFlag(FLAGS_dq_beta)));
  t.set_dq_alpha(static_cast<float>(absl::GetFlag(FLAGS_dq_alpha)));
  t.set_error_feedback(absl::GetFlag(FLAGS_error_feedback));
  t.mutable_pull_encoding()->set_encoding(pull_encoding);
  if (pull_encoding == v1::ENCODING_QSGD) {
    t.mutable_pull_encoding()->set_bits(absl::GetFlag(FLAGS_pull_bits));
    t.mutable_pull_encoding()->set_bucket_size(absl::GetFlag(FLAGS_bucket_size));
    t.mutable_pull_encoding()->set_scaling(v1::QUANT_SCALING_MAX_ABS);
  }
  t.set_pull_bits_policy(pull_policy);
  auto non_negative = [](const char* flag, int64_t v) -> absl::Status {
    if (v < 0)
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be >= 0, got ", v));
    return absl::OkStatus();
  };
  for (auto [flag, v] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"num_workers", absl::GetFlag(FLAGS_num_workers)},
           {"local_steps", absl::GetFlag(FLAGS_local_steps)},
           {"input_dim", absl::GetFlag(FLAGS_input_dim)},
           {"num_classes", absl::GetFlag(FLAGS_num_classes)},
           {"hidden_units", absl::GetFlag(FLAGS_hidden_units)},
           {"batch_size", absl::GetFlag(FLAGS_batch_size)},
           {"rounds", absl::GetFlag(FLAGS_rounds)},
           {"eval_every", absl::GetFlag(FLAGS_eval_every)},
           {"shard_count", absl::GetFlag(FLAGS_shard_count)},
           {"chunk_bytes", absl::GetFlag(FLAGS_chunk_bytes)},
           {"threads", absl::GetFlag(FLAGS_threads)}}) {
    if (absl::Status s = non_negative(flag, v); !s.ok()) return s;
  }
  t.set_num_workers(absl::GetFlag(FLAGS_num_workers));
  t.set_local_steps(t.update_kind() == v1::UPDATE_KIND_GRADIENT ? 1
                                                                : absl::GetFlag(FLAGS_local_steps));
  t.set_model(absl::GetFlag(FLAGS_model));
  t.set_input_dim(absl::GetFlag(FLAGS_input_dim));
  t.set_num_classes(absl::GetFlag(FLAGS_num_classes));
  t.set_hidden_units(absl::GetFlag(FLAGS_hidden_units));
  t.set_l2(static_cast<float>(absl::GetFlag(FLAGS_l2)));
  t.set_learning_rate(static_cast<float>(absl::GetFlag(FLAGS_learning_rate)));
  t.set_lr_decay(static_cast<float>(absl::GetFlag(FLAGS_lr_decay)));
  t.set_batch_size(absl::GetFlag(FLAGS_batch_size));
  t.set_rounds(absl::GetFlag(FLAGS_rounds));
  t.set_epochs(static_cast<float>(absl::GetFlag(FLAGS_epochs)));
  t.set_eval_every(absl::GetFlag(FLAGS_eval_every));
  t.set_data_seed(absl::GetFlag(FLAGS_data_seed));
  t.set_model_seed(absl::GetFlag(FLAGS_seed));
  PS_ASSIGN_OR_RETURN(o.layout, LayoutFromFlags());
  o.initial_model_file = absl::GetFlag(FLAGS_init_model);
  o.max_model_bytes = absl::GetFlag(FLAGS_max_model_mb) << 20;
  PS_ASSIGN_OR_RETURN(
      o.shard_index, ShardIndexFromFlag(absl::GetFlag(FLAGS_shard_index), std::getenv("POD_NAME")));
  o.shard_count = absl::GetFlag(FLAGS_shard_count);
  o.staleness_exponent = absl::GetFlag(FLAGS_staleness_exponent);
  o.max_staleness = absl::GetFlag(FLAGS_max_staleness);
  o.server_learning_rate = static_cast<float>(absl::GetFlag(FLAGS_server_learning_rate));
  o.outer = DefaultOuterOptions(absl::GetFlag(FLAGS_outer_optimizer).name);
  if (absl::GetFlag(FLAGS_outer_lr) >= 0) o.outer.lr = absl::GetFlag(FLAGS_outer_lr);
  if (absl::GetFlag(FLAGS_outer_momentum) >= 0) {
    o.outer.momentum = absl::GetFlag(FLAGS_outer_momentum);
  }
  o.outer.beta1 = absl::GetFlag(FLAGS_adam_beta1);
  o.outer.beta2 = absl::GetFlag(FLAGS_adam_beta2);
  o.outer.tau = absl::GetFlag(FLAGS_adam_tau);
  if (absl::GetFlag(FLAGS_outer_period) > 0) o.outer.period = absl::GetFlag(FLAGS_outer_period);
  o.lease = absl::GetFlag(FLAGS_lease);
  o.max_pull_wait = absl::GetFlag(FLAGS_max_pull_wait);
  o.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  o.threads = absl::GetFlag(FLAGS_threads);
  if (absl::GetFlag(FLAGS_backup_workers) < 0 || absl::GetFlag(FLAGS_min_quorum) < 0) {
    return absl::InvalidArgumentError("--backup_workers and --min_quorum must be >= 0");
  }
  t.set_backup_workers(absl::GetFlag(FLAGS_backup_workers));
  t.set_round_deadline_ms(
      std::max<int64_t>(0, absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_round_deadline))));
  t.set_min_quorum(absl::GetFlag(FLAGS_min_quorum));
  t.set_late_policy(absl::GetFlag(FLAGS_late_policy));
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  if (!o.checkpoint_dir.empty()) {
    o.checkpoint_every_versions = absl::GetFlag(FLAGS_checkpoint_every_versions);
    o.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  }
  o.checkpoint_keep = absl::GetFlag(FLAGS_checkpoint_keep);
  o.max_concurrent_pushes = absl::GetFlag(FLAGS_max_concurrent_pushes);
  o.max_pending_pulls = absl::GetFlag(FLAGS_max_pending_pulls);
  o.push_buffer_bytes = absl::GetFlag(FLAGS_push_buffer_mb) << 20;
  o.idle_timeout = absl::GetFlag(FLAGS_idle_timeout);
  o.max_update_ratio = absl::GetFlag(FLAGS_max_update_ratio);
  o.transport_memory_bytes = absl::GetFlag(FLAGS_transport_memory_mb) << 20;
  o.stream_window_bytes = absl::GetFlag(FLAGS_stream_window_kb) << 10;
  o.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  o.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  o.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.security.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  o.security.allow_plaintext = absl::GetFlag(FLAGS_allow_plaintext);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  PS_RETURN_IF_ERROR(o.Validate());
  return o;
}

// Set once, by a signal or by the end of training; main waits for it.
class StopRequest {
 public:
  void Stop(const std::string& reason) {
    absl::MutexLock lock(&mu_);
    if (reason_.empty()) reason_ = reason;
  }
  std::string Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](std::string* r) { return !r->empty(); }, &reason_));
    return reason_;
  }

 private:
  absl::Mutex mu_;
  std::string reason_ ABSL_GUARDED_BY(mu_);
};

// --export_model: the newest checkpoint of every shard as one .npz.
int ExportModel() {
  const std::vector<std::string> dirs =
      absl::StrSplit(absl::GetFlag(FLAGS_checkpoint_dir), ',', absl::SkipEmpty());
  if (dirs.empty()) {
    std::fprintf(stderr, "ps-server: --export_model needs --checkpoint_dir\n");
    return 2;
  }
  const std::string path = absl::GetFlag(FLAGS_export_model);
  absl::StatusOr<uint64_t> version = ExportCheckpoints(dirs, path);
  if (!version.ok()) {
    std::fprintf(stderr, "ps-server: %s\n", version.status().ToString().c_str());
    return 1;
  }
  std::printf("exported version %llu to %s\n", static_cast<unsigned long long>(*version),
              path.c_str());
  return 0;
}

int Main() {
  if (!absl::GetFlag(FLAGS_export_model).empty()) return ExportModel();
  static StopRequest stop;
  HandleStopSignals([](const char* signal_name) { stop.Stop(signal_name); });

  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    std::fprintf(stderr, "ps-server: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_exit_when_done)) {
    options->on_training_done = [] { stop.Stop("training done"); };
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<ParameterServer>> server = ParameterServer::Create(*options);
  if (!server.ok()) {
    std::fprintf(stderr, "ps-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  // Written whole under a temporary name, then renamed: a reader never sees a partial port.
  auto write_port = [](const std::string& path, int port) {
    if (path.empty()) return;
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::rename(tmp.c_str(), path.c_str());
  };
  write_port(absl::GetFlag(FLAGS_port_file), (*server)->port());
  write_port(absl::GetFlag(FLAGS_metrics_port_file), (*server)->metrics_port());
  const std::string reason = stop.Wait();
  LogInfo(absl::StrCat("event=stopping reason=\"", reason, "\""));
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));

  const v1::StatusResponse status = (*server)->GetStatus();
  const v1::TrainingConfig& t = options->training;
  JsonObject summary;
  summary.Add("binary", "ps-server")
      .Add("mode", t.mode() == v1::AGGREGATION_MODE_SYNC ? "sync" : "async")
      .Add("update", t.update_kind() == v1::UPDATE_KIND_GRADIENT ? "gradient" : "delta")
      .Add("K", t.num_workers())
      .Add("H", t.local_steps())
      .Add("model", t.model())
      .Add("outer_optimizer", absl::GetFlag(FLAGS_outer_optimizer).name)
      .Add("update_encoding", EncodingName(t.update_encoding()))
      .Add("bits_policy", t.bits_policy() == v1::BITS_POLICY_DQSGD ? "dqsgd" : "fixed")
      .Add("error_feedback", t.error_feedback())
      .Add("pull_encoding", EncodingName(t.pull_encoding()))
      .Add("pull_bits_policy", t.pull_bits_policy() == v1::BITS_POLICY_DQSGD ? "dqsgd" : "fixed")
      // Under the names the summaries had before they followed Status.
      .Add("rounds", status.rounds_completed())
      .Add("final_train_loss", status.last_train_loss())
      .Add("test_accuracy", status.last_eval().test_accuracy())
      .Add("test_accuracy_version", status.last_eval().version())
      .Add("wall_time_s", absl::ToDoubleSeconds(absl::Now() - start))
      .Add("stop_reason", reason)
      // Every counter of Status and of its wire counters, under their field names.
      .AddFields(status)
      .AddFields(status.wire());
  if (const std::string path = absl::GetFlag(FLAGS_summary_json); !path.empty()) {
    if (absl::Status s = summary.WriteToFile(path); !s.ok()) {
      LogError(s.ToString());
      return 1;
    }
  }
  LogInfo(absl::StrCat("summary ", summary.ToString()));
  return 0;
}

}  // namespace
}  // namespace ps

int main(int argc, char** argv, char** envp) {
  absl::SetProgramUsageMessage(
      "Parameter server for communication-efficient distributed training.\n"
      "Usage: ps-server --listen=0.0.0.0:50051 --mode=sync --num_workers=4 [flags]");
  // --help lists this binary's own flags (absl matches flag files to the program name otherwise).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server_main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  // PS_<FLAG>=value in the environment (containers) sets --<flag>; the command line wins.
  ps::ParseCommandLineWithEnvironment(argc, argv, envp);
  ps::TuneMallocForLargeMessages();
  return ps::Main();
}
