// ps-worker: trains on its shard of the data against a ps-server, or (--evaluate_only) evaluates
// the server's current model on the test set.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "app/env_flags.h"
#include "app/malloc_tuning.h"
#include "app/stop_signals.h"
#include "client/session.h"
#include "client/sharded_client.h"
#include "common/files.h"
#include "common/json_writer.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/trainer.h"

ABSL_FLAG(std::string, servers, "127.0.0.1:50051",
          "Comma-separated host:port of the server shards, in shard order (one for one server).");
ABSL_FLAG(std::string, name, "",
          "Worker name shown in the server's logs and Status (default: host-pid).");
ABSL_FLAG(int, rank, -1,
          "Data shard index to ask for (0..K-1); -1 lets the server pick a free one.");
ABSL_FLAG(std::string, data_format, "fashion_mnist", "fashion_mnist (IDX files) or libsvm.");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder with Fashion-MNIST's {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].");
ABSL_FLAG(std::string, train_file, "", "LIBSVM training file (--data_format=libsvm).");
ABSL_FLAG(std::string, test_file, "", "LIBSVM test file (--data_format=libsvm).");
ABSL_FLAG(int64_t, train_limit, 0, "Use only the first N training examples (0 = all).");
ABSL_FLAG(int64_t, test_limit, 0, "Use only the first N test examples (0 = all).");
ABSL_FLAG(absl::Duration, rpc_timeout, absl::Seconds(30),
          "Deadline of each call (a pull adds its wait).");
ABSL_FLAG(absl::Duration, pull_wait, absl::Seconds(10), "Longest a pull long-polls per call.");
ABSL_FLAG(absl::Duration, retry_budget, absl::Seconds(60),
          "How long UNAVAILABLE is retried before giving up.");
ABSL_FLAG(absl::Duration, step_delay, absl::ZeroDuration(),
          "Sleep this long after every local step: a slow worker, for experiments.");
ABSL_FLAG(
    bool, overlap, false,
    "Overlap-Local-SGD: run each round's push and pull behind the next round's local "
    "steps, pulling the local model towards the global one when it arrives (--update=delta).");
ABSL_FLAG(double, overlap_pullback, 0.5,
          "With --overlap: alpha in x <- x - alpha (x - global), in [0, 1].");
ABSL_FLAG(absl::Duration, progress_every, absl::Seconds(2), "Seconds between progress lines.");
ABSL_FLAG(bool, quiet, false, "No progress lines (errors and the summary still print).");
ABSL_FLAG(bool, evaluate_only, false,
          "Do not train: pull the current model and evaluate it on the test set.");
ABSL_FLAG(std::string, summary_json, "", "Write a JSON run summary here at exit.");
ABSL_FLAG(std::string, eval_log, "",
          "Append one JSON line per test-set evaluation here (round, version, seconds elapsed, "
          "before the first round and evaluating, test loss and accuracy, bytes so far): the "
          "learning curve.");
ABSL_FLAG(bool, health_check, false,
          "Do not train: exit 0 if every server in --servers answers Status (it has loaded its "
          "model), 1 otherwise. For container health checks.");
ABSL_FLAG(std::string, update_encoding, "",
          "Override the server's update encoding (fp32, qsgd, sign) if the server allows it.");
ABSL_FLAG(int, bits, 0, "Override the server's qsgd bits (2..8); 0 = the server's.");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that signed the server's certificate: turns TLS on.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate, for servers that require mutual TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to check the server's certificate against, if not the host in --servers.");
ABSL_FLAG(std::string, token_file, "",
          "File holding this worker's token (sent as `authorization: Bearer` on every call).");
ABSL_FLAG(std::string, bits_policy, "", "Override the server's bits policy (fixed, dqsgd).");
ABSL_FLAG(int, stopped_exit_code, 0,
          "Exit code (0..255) when SIGTERM or SIGINT ends training before its last round; 0 = a "
          "clean stop. A Kubernetes Job counts an index whose pod exits 0 as done, so deploy/k8s "
          "sets 143: an evicted worker is started again instead.");

namespace ps {
namespace {

DataOptions DataFromFlags() {
  DataOptions data;
  data.format = absl::GetFlag(FLAGS_data_format);
  data.fashion_mnist_dir = absl::GetFlag(FLAGS_data_dir);
  data.train_file = absl::GetFlag(FLAGS_train_file);
  data.test_file = absl::GetFlag(FLAGS_test_file);
  data.train_limit = absl::GetFlag(FLAGS_train_limit);
  data.test_limit = absl::GetFlag(FLAGS_test_limit);
  return data;
}

absl::Status WriteSummary(const JsonObject& summary) {
  std::printf("summary %s\n", summary.ToString().c_str());
  const std::string path = absl::GetFlag(FLAGS_summary_json);
  return path.empty() ? absl::OkStatus() : summary.WriteToFile(path);
}

// An observer: reads the model without joining.
absl::Status EvaluateOnly(const PsClientOptions& options) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<ShardedClient> client, ShardedClient::Create(options));
  PS_RETURN_IF_ERROR(client->DiscoverRanges());
  PS_ASSIGN_OR_RETURN(v1::StatusResponse status, client->Status());
  const v1::TrainingConfig& config = status.config();
  const ModelSpec spec = ModelSpecFromConfig(config);
  PS_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, CreateModel(spec));
  std::vector<float> params(status.model_size());
  const size_t shards = client->num_shards();
  std::vector<absl::StatusOr<PullResult>> pulled =
      client->Pull(std::vector<uint64_t>(shards, 0), std::vector<bool>(shards, true),
                   absl::ZeroDuration(), absl::MakeSpan(params));
  for (const auto& p : pulled) PS_RETURN_IF_ERROR(p.status());
  PS_ASSIGN_OR_RETURN(Dataset test, LoadTestData(DataFromFlags(), spec));
  const EvalResult eval = Evaluate(*model, params, test);
  JsonObject summary;
  summary.Add("binary", "ps-worker")
      .Add("evaluate_only", true)
      .Add("version", pulled[0]->version)
      .Add("rounds", status.rounds_completed())
      .Add("test_loss", eval.loss)
      .Add("test_accuracy", eval.accuracy)
      .Add("test_examples", test.size())
      .Add("server_bytes_received", status.wire().bytes_received())
      .Add("server_bytes_sent", status.wire().bytes_sent());
  return WriteSummary(summary);
}

absl::Status HealthCheck(const PsClientOptions& options) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<ShardedClient> client, ShardedClient::Create(options));
  for (size_t i = 0; i < client->num_shards(); ++i) {
    PS_ASSIGN_OR_RETURN(v1::StatusResponse status, client->shard(i)->Status());
    std::printf("server %zu: shard %u of %u, version %llu, %d members\n", i, status.shard_index(),
                status.shard_count(), static_cast<unsigned long long>(status.version()),
                status.members_size());
  }
  return absl::OkStatus();
}

// Appends `record` to the --eval_log file as one JSON line.
void WriteEvalLine(std::FILE* log, const EvalRecord& record) {
  JsonObject line;
  line.Add("round", record.round)
      .Add("rounds", record.rounds)
      .Add("version", record.version)
      .Add("elapsed_s", record.elapsed_s)
      .Add("train_start_s", record.train_start_s)
      .Add("eval_s", record.eval_s)
      .Add("train_loss", record.train_loss)
      .Add("test_loss", record.test.loss)
      .Add("test_accuracy", record.test.accuracy)
      .Add("bytes_sent", record.wire.bytes_sent)
      .Add("upload_bytes_sent", record.wire.upload_bytes_sent)
      .Add("bytes_received", record.wire.bytes_received);
  std::fprintf(log, "%s\n", line.ToString().c_str());
  std::fflush(log);
}

// Whether a stop signal ended training before its last round.
absl::StatusOr<bool> Train(const SessionOptions& session_options, TrainerOptions options) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<Session> session, Session::Connect(session_options));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> eval_log(nullptr, &std::fclose);
  if (const std::string path = absl::GetFlag(FLAGS_eval_log); !path.empty()) {
    eval_log.reset(std::fopen(path.c_str(), "a"));
    if (eval_log == nullptr) {
      return absl::NotFoundError(absl::StrCat("--eval_log=", path, ": ", std::strerror(errno)));
    }
    options.on_eval = [log = eval_log.get()](const EvalRecord& r) { WriteEvalLine(log, r); };
  }
  Trainer trainer(options, session.get());
  PS_ASSIGN_OR_RETURN(TrainingResult r, trainer.Run());
  JsonObject summary;
  summary.Add("binary", "ps-worker")
      .Add("worker_id", r.worker_id)
      .Add("rank", r.rank)
      .Add("mode", r.config.mode() == v1::AGGREGATION_MODE_SYNC ? "sync" : "async")
      .Add("update", r.config.update_kind() == v1::UPDATE_KIND_GRADIENT ? "gradient" : "delta")
      .Add("K", r.config.num_workers())
      .Add("H", r.config.local_steps())
      .Add("model", r.config.model())
      .Add("rounds", r.rounds)
      .Add("steps", r.steps)
      .Add("final_version", r.final_version)
      .Add("final_train_loss", r.final_train_loss)
      .Add("test_loss", r.final_test.loss)
      .Add("test_accuracy", r.final_test.accuracy)
      .Add("stale_refusals", r.stale_refusals)
      .Add("stale_repushes", r.stale_repushes)
      .Add("rejoins", r.rejoins)
      .Add("steps_overlapped", r.steps_overlapped)
      .Add("stopped_early", r.stopped_early)
      .Add("bytes_sent", r.wire.bytes_sent)
      .Add("bytes_received", r.wire.bytes_received)
      .Add("raw_bytes_sent", r.wire.raw_bytes_sent)
      .Add("raw_bytes_received", r.wire.raw_bytes_received)
      .Add("payload_bytes_sent", r.wire.payload_bytes_sent)
      .Add("upload_bytes_sent", r.wire.upload_bytes_sent)
      .Add("payload_bytes_received", r.wire.payload_bytes_received)
      .Add("uplink_compression",
           r.wire.bytes_sent > 0 ? static_cast<double>(r.wire.raw_bytes_sent) / r.wire.bytes_sent
                                 : 0.0)
      .Add("downlink_compression",
           r.wire.bytes_received > 0
               ? static_cast<double>(r.wire.raw_bytes_received) / r.wire.bytes_received
               : 0.0)
      .Add("mean_update_bits", r.mean_update_bits)
      .Add("wall_time_s", r.wall_time_s);
  PS_RETURN_IF_ERROR(WriteSummary(summary));
  return r.stopped_early;
}

int Main() {
  // SIGTERM or SIGINT: finish the current round's push, then leave (one thread takes the signals
  // with sigwait, so no handler runs on a gRPC thread).
  static std::atomic<bool> stop{false};
  HandleStopSignals([](const char* signal_name) {
    LogInfo(absl::StrCat("event=stop_requested signal=", signal_name));
    stop = true;
  });

  const int stopped_exit_code = absl::GetFlag(FLAGS_stopped_exit_code);
  const double pullback = absl::GetFlag(FLAGS_overlap_pullback);
  if (!(pullback >= 0.0 && pullback <= 1.0)) {
    std::fprintf(stderr, "ps-worker: --overlap_pullback must be in [0, 1], got %g\n", pullback);
    return 2;
  }
  if (stopped_exit_code < 0 || stopped_exit_code > 255) {
    std::fprintf(stderr, "ps-worker: --stopped_exit_code must be in 0..255, got %d\n",
                 stopped_exit_code);
    return 2;
  }
  PsClientOptions client_options;
  client_options.servers = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',', absl::SkipEmpty());
  client_options.worker_name = absl::GetFlag(FLAGS_name);
  if (client_options.worker_name.empty()) {
    char host[256] = "worker";
    gethostname(host, sizeof host - 1);
    client_options.worker_name = absl::StrCat(host, "-", getpid());
  }
  client_options.requested_rank = absl::GetFlag(FLAGS_rank);
  client_options.rpc_timeout = absl::GetFlag(FLAGS_rpc_timeout);
  client_options.retry_budget = absl::GetFlag(FLAGS_retry_budget);
  client_options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  client_options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  client_options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  client_options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (const std::string path = absl::GetFlag(FLAGS_token_file); !path.empty()) {
    absl::StatusOr<std::string> token = ReadSmallFile(path, 4096);
    if (!token.ok()) {
      std::fprintf(stderr, "ps-worker: %s\n", std::string(token.status().message()).c_str());
      return 2;
    }
    client_options.token = std::string(absl::StripAsciiWhitespace(*token));
  }
  if (client_options.servers.empty()) {
    std::fprintf(stderr, "ps-worker: no server address given (--servers)\n");
    return 2;
  }
  SessionOptions session_options;
  session_options.connection = client_options;
  session_options.pull_wait = absl::GetFlag(FLAGS_pull_wait);
  session_options.compression.update_encoding = absl::GetFlag(FLAGS_update_encoding);
  session_options.compression.bits = static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_bits)));
  session_options.compression.bits_policy = absl::GetFlag(FLAGS_bits_policy);
  TrainerOptions options;
  options.data = DataFromFlags();
  options.progress_every = absl::GetFlag(FLAGS_progress_every);
  options.step_delay = absl::GetFlag(FLAGS_step_delay);
  options.overlap = absl::GetFlag(FLAGS_overlap);
  options.overlap_pullback = static_cast<float>(pullback);
  options.quiet = absl::GetFlag(FLAGS_quiet);
  options.stop = &stop;
  absl::Status status;
  bool stopped_early = false;
  if (absl::GetFlag(FLAGS_health_check)) {
    status = HealthCheck(client_options);
  } else if (absl::GetFlag(FLAGS_evaluate_only)) {
    status = EvaluateOnly(client_options);
  } else {
    absl::StatusOr<bool> trained = Train(session_options, options);
    status = trained.status();
    stopped_early = trained.ok() && *trained;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "ps-worker: %s\n", status.ToString().c_str());
    return 1;
  }
  if (stopped_early && stopped_exit_code != 0) {
    LogInfo(absl::StrCat("event=stopped_early exit_code=", stopped_exit_code));
    return stopped_exit_code;
  }
  return 0;
}

}  // namespace
}  // namespace ps

int main(int argc, char** argv, char** envp) {
  absl::SetProgramUsageMessage(
      "Worker of the parameter server: trains a model on its shard of the data.\n"
      "Usage: ps-worker --servers=HOST:PORT [flags]");
  // --help lists this binary's own flags (absl matches flag files to the program name otherwise).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "worker_main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  // PS_<FLAG>=value in the environment (containers) sets --<flag>; the command line wins.
  ps::ParseCommandLineWithEnvironment(argc, argv, envp, {{"JOB_COMPLETION_INDEX", "rank"}});
  ps::TuneMallocForLargeMessages();
  return ps::Main();
}
