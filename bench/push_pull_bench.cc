// Whole-path throughput of a running ps-server: K clients push fp32 updates (phase 1) and pull the
// full model (phase 2) for a fixed time each, through the real PsClient over gRPC.
// Prints one JSON line per phase. bench/run_push_pull.sh runs it next to iperf3 on loopback.
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "app/malloc_tuning.h"
#include "client/ps_client.h"
#include "common/json_writer.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "ps-server address (async mode, K >= --clients).");
ABSL_FLAG(int, clients, 1, "Concurrent clients.");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(5), "Length of each phase.");

namespace ps {
namespace {

struct PhaseResult {
  uint64_t payload_bytes = 0;
  uint64_t operations = 0;
  double seconds = 0;
};

template <typename Op>
PhaseResult RunPhase(std::vector<std::unique_ptr<PsClient>>& clients, absl::Duration duration,
                     Op op) {
  std::atomic<uint64_t> bytes{0}, ops{0};
  std::atomic<bool> failed{false};
  const absl::Time start = absl::Now();
  const absl::Time stop = start + duration;
  std::vector<std::thread> threads;
  for (size_t k = 0; k < clients.size(); ++k) {
    threads.emplace_back([&, k] {
      while (absl::Now() < stop && !failed) {
        absl::StatusOr<uint64_t> moved = op(*clients[k]);
        if (!moved.ok()) {
          std::fprintf(stderr, "client %zu: %s\n", k, moved.status().ToString().c_str());
          failed = true;
          return;
        }
        bytes += *moved;
        ++ops;
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failed) std::exit(1);
  return {bytes.load(), ops.load(), absl::ToDoubleSeconds(absl::Now() - start)};
}

void Report(const char* phase, int clients, uint64_t model_size, const PhaseResult& r) {
  JsonObject json;
  json.Add("phase", phase)
      .Add("clients", clients)
      .Add("floats", model_size)
      .Add("operations", r.operations)
      .Add("payload_bytes", r.payload_bytes)
      .Add("seconds", r.seconds)
      .Add("gbytes_per_s", r.payload_bytes / r.seconds / 1e9);
  std::printf("%s\n", json.ToString().c_str());
  std::fflush(stdout);
}

int Main() {
  const int num_clients = absl::GetFlag(FLAGS_clients);
  std::vector<std::unique_ptr<PsClient>> clients;
  uint64_t model_size = 0;
  for (int k = 0; k < num_clients; ++k) {
    PsClientOptions o;
    o.servers = {absl::GetFlag(FLAGS_server)};
    o.worker_name = absl::StrFormat("bench-%d", k);
    o.rpc_timeout = absl::Seconds(120);
    auto client = PsClient::Create(o);
    if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().ToString().c_str()), 1;
    auto joined = (*client)->Join();
    if (!joined.ok()) return std::fprintf(stderr, "%s\n", joined.status().ToString().c_str()), 1;
    model_size = joined->model_size();
    clients.push_back(std::move(*client));
  }
  // Small finite values: the server applies each push for real.
  const std::vector<float> update(model_size, 1e-6f);
  const PhaseResult push = RunPhase(
      clients, absl::GetFlag(FLAGS_duration), [&](PsClient& c) -> absl::StatusOr<uint64_t> {
        auto ack = c.Push(v1::UPDATE_KIND_MODEL_DELTA, 1, 32, update, 0.0);
        if (!ack.ok()) return ack.status();
        return model_size * sizeof(float);
      });
  Report("push", num_clients, model_size, push);
  std::vector<std::vector<float>> buffers(num_clients, std::vector<float>(model_size));
  std::atomic<int> next_buffer{0};
  thread_local int my_buffer = -1;
  const PhaseResult pull = RunPhase(
      clients, absl::GetFlag(FLAGS_duration), [&](PsClient& c) -> absl::StatusOr<uint64_t> {
        if (my_buffer < 0) my_buffer = next_buffer++;
        auto r = c.Pull(0, absl::ZeroDuration(), absl::MakeSpan(buffers[my_buffer]));
        if (!r.ok()) return r.status();
        return model_size * sizeof(float);
      });
  Report("pull", num_clients, model_size, pull);
  for (auto& c : clients) c->Leave().IgnoreError();
  return 0;
}

}  // namespace
}  // namespace ps

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  ps::TuneMallocForLargeMessages();
  return ps::Main();
}
