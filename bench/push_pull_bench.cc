// Whole-path throughput of a running ps-server: K clients push updates (phase 1; fp32, or one
// QSGD encoding made once, so that the client's encoder is not what is measured) and pull the full
// model (phase 2) for a fixed time each, through the real PsClient over gRPC. The first client
// uploads the initial model (a flat layout of --floats zeros) to a server started without one.
// Prints one JSON line per phase. bench/run_push_pull.sh runs it next to iperf3 on loopback.
#include <atomic>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "app/malloc_tuning.h"
#include "client/ps_client.h"
#include "common/codec.h"
#include "common/json_writer.h"
#include "common/layout.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "ps-server address (async mode with K >= --clients, or sync with one client; "
          "--model_size = --floats).");
ABSL_FLAG(uint64_t, floats, 1000000, "Model size.");
ABSL_FLAG(int, bits, 32, "32: fp32 pushes; 2 to 8: QSGD pushes of that many bits.");
ABSL_FLAG(int, clients, 1, "Concurrent clients.");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(5), "Length of each phase.");
ABSL_FLAG(bool, pull, true, "Run the pull phase after the push phase.");

namespace ps {
namespace {

struct PhaseResult {
  uint64_t payload_bytes = 0;
  uint64_t operations = 0;
  double seconds = 0;
};

// Every client first does one operation untimed (the first touch of both processes' buffers
// is a start-up cost: with 400 MB messages it took most of a 3 s phase), then all run `op` for
// `duration` together.
template <typename Op>
PhaseResult RunPhase(std::vector<std::unique_ptr<PsClient>>& clients, absl::Duration duration,
                     Op op) {
  std::atomic<uint64_t> bytes{0}, ops{0};
  std::atomic<bool> failed{false};
  absl::BlockingCounter warm(static_cast<int>(clients.size()));
  absl::Notification go;
  absl::Time stop;  // written before `go` is notified
  std::vector<std::thread> threads;
  for (size_t k = 0; k < clients.size(); ++k) {
    threads.emplace_back([&, k] {
      auto run_op = [&]() -> std::optional<uint64_t> {
        absl::StatusOr<uint64_t> moved = op(*clients[k]);
        if (moved.ok()) return *moved;
        std::fprintf(stderr, "client %zu: %s\n", k, moved.status().ToString().c_str());
        failed = true;
        return std::nullopt;
      };
      const bool warmed = run_op().has_value();
      warm.DecrementCount();
      go.WaitForNotification();
      if (!warmed) return;
      while (absl::Now() < stop && !failed) {
        const std::optional<uint64_t> moved = run_op();
        if (!moved.has_value()) return;
        bytes += *moved;
        ++ops;
      }
    });
  }
  warm.Wait();
  const absl::Time start = absl::Now();
  stop = start + duration;
  go.Notify();
  for (auto& t : threads) t.join();
  if (failed) std::exit(1);
  return {bytes.load(), ops.load(), absl::ToDoubleSeconds(absl::Now() - start)};
}

void Report(const char* phase, int clients, uint64_t model_size, const PhaseResult& r) {
  JsonObject json;
  json.Add("phase", phase)
      .Add("clients", clients)
      .Add("bits", std::string(phase) == "push" ? absl::GetFlag(FLAGS_bits) : 32)
      .Add("floats", model_size)
      .Add("operations", r.operations)
      .Add("payload_bytes", r.payload_bytes)
      .Add("seconds", r.seconds)
      .Add("gbytes_per_s", r.payload_bytes / r.seconds / 1e9);
  std::printf("%s\n", json.ToString().c_str());
  std::fflush(stdout);
}

// The version the server had when the clients joined: where the first push builds on.
std::atomic<uint64_t> joined_version{1};

// A member of a server holding a model of `layout` (uploading zeros first if it has none).
absl::StatusOr<std::unique_ptr<PsClient>> JoinedClient(int k, const Layout& layout) {
  PsClientOptions o;
  o.servers = {absl::GetFlag(FLAGS_server)};
  o.worker_name = absl::StrFormat("bench-%d", k);
  o.rpc_timeout = absl::Seconds(600);
  PS_ASSIGN_OR_RETURN(std::unique_ptr<PsClient> client, PsClient::Create(o));
  for (int attempt = 0; attempt < 3; ++attempt) {
    PS_ASSIGN_OR_RETURN(v1::JoinResponse joined, client->Join(std::nullopt, &layout));
    if (!joined.initial_model_needed()) {
      joined_version = std::max<uint64_t>(joined.version(), 1);
      return client;
    }
    absl::Status s = client->UploadInitialModel(layout, std::vector<float>(layout.size(), 0.0f));
    if (!s.ok() && !absl::IsAlreadyExists(s)) return s;
  }
  return absl::InternalError("the server still wants an initial model after uploading one");
}

// What every push sends: fp32 values, or their QSGD encoding.
struct PushPayload {
  v1::EncodingParams encoding;
  std::string bytes;
};

absl::StatusOr<PushPayload> MakePayload(uint64_t n, int bits) {
  PushPayload p;
  if (bits == 32) {
    p.encoding.set_encoding(v1::ENCODING_FP32);
  } else {
    p.encoding.set_encoding(v1::ENCODING_QSGD);
    p.encoding.set_bits(bits);
    p.encoding.set_bucket_size(512);
  }
  // Small finite values: the server applies each push for real.
  std::vector<float> update(n);
  for (uint64_t i = 0; i < n; ++i) update[i] = (i % 2 ? 1e-6f : -1e-6f) * (1 + i % 7);
  PS_RETURN_IF_ERROR(EncodeInto(p.encoding, update, &p.bytes));
  return p;
}

int Main() {
  const int num_clients = absl::GetFlag(FLAGS_clients);
  const uint64_t model_size = absl::GetFlag(FLAGS_floats);
  absl::StatusOr<Layout> layout = Layout::Flat(model_size);
  absl::StatusOr<PushPayload> payload = MakePayload(model_size, absl::GetFlag(FLAGS_bits));
  if (!layout.ok() || !payload.ok()) {
    std::fprintf(stderr, "%s\n",
                 (layout.ok() ? payload.status() : layout.status()).ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<PsClient>> clients;
  for (int k = 0; k < num_clients; ++k) {
    auto client = JoinedClient(k, *layout);
    if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().ToString().c_str()), 1;
    clients.push_back(std::move(*client));
  }
  // GB/s counts fp32-equivalent bytes (4 per coordinate), so that encodings compare directly.
  const PhaseResult push = RunPhase(
      clients, absl::GetFlag(FLAGS_duration), [&](PsClient& c) -> absl::StatusOr<uint64_t> {
        // On the version the last ack named: async takes any, a sync round of one client needs it.
        thread_local uint64_t base = joined_version;
        auto ack = c.PushEncoded(v1::UPDATE_KIND_MODEL_DELTA, base, 32, payload->encoding,
                                 payload->bytes, model_size, 0.0);
        if (!ack.ok()) return ack.status();
        base = ack->version();
        return model_size * sizeof(float);
      });
  Report("push", num_clients, model_size, push);
  if (!absl::GetFlag(FLAGS_pull)) {
    for (auto& c : clients) c->Leave().IgnoreError();
    return 0;
  }
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
