// ps_load: many simulated workers against one ps-server, for the soak (bench/soak.py) and the
// many-workers benchmark. Each of --clients threads is one worker with its own Session (its own
// connection): it joins, then syncs as fast as it can, sending a small fixed change of the model
// with alternating sign (so that the model does not drift), whatever the server's mode and
// encodings. With --churn_rounds R a client leaves after every R of its rounds and a new Session
// joins in its place, so the server sees members come and go (a table kept per worker that is
// not pruned grows with every churn).
//
// Prints one JSON line every --report_every (Session::Sync calls completed in the interval, that
// is updates pushed and models pulled back; errors; percentiles of a Sync's time, which in sync
// mode includes the wait for the round) and a last one with "final": true. Exit 1 if any call
// failed. With --warmup_syncs N the --duration and the percentiles start only once every client
// has done N syncs (256 clients of a 4 MB model take 20 s to join and fetch the first model on
// 2 cores), announced by a line with "warm": true.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "app/malloc_tuning.h"
#include "client/session.h"
#include "common/json_writer.h"
#include "common/layout.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "ps-server address.");
ABSL_FLAG(int, clients, 64, "Simulated workers (threads, one Session each).");
ABSL_FLAG(uint64_t, floats, 100000, "Model size (a flat layout, as ps-server --model_size).");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(60), "How long to run.");
ABSL_FLAG(absl::Duration, report_every, absl::Seconds(1), "Between progress lines.");
ABSL_FLAG(int, churn_rounds, 0, "Leave and join again as a new worker every N rounds; 0 = never.");
ABSL_FLAG(int, max_error_lines, 5, "Errors printed to stderr (all are counted).");
ABSL_FLAG(int, warmup_syncs, 0,
          "Syncs every client does before --duration starts; not counted in the results.");
ABSL_FLAG(absl::Duration, warmup_timeout, absl::Minutes(10), "Longest wait for the warm-up.");

namespace ps {
namespace {

// Sync times of all clients since the last report, and the totals.
class Recorder {
 public:
  // Sync times are recorded only from here on.
  void StartMeasuring() { measuring_ = true; }
  void Round(double ms) {
    if (!measuring_) return;
    absl::MutexLock lock(&mu_);
    interval_.push_back(ms);
    all_.push_back(static_cast<float>(ms));
  }
  void Error(const absl::Status& status, const char* what) {
    absl::MutexLock lock(&mu_);
    if (errors_++ < absl::GetFlag(FLAGS_max_error_lines)) {
      std::fprintf(stderr, "ps_load: %s: %s\n", what, status.ToString().c_str());
    }
  }
  void Churned() { churns_.fetch_add(1, std::memory_order_relaxed); }
  void Stale(uint64_t n) { stale_.fetch_add(n, std::memory_order_relaxed); }

  // One progress line: the interval's syncs and percentiles; starts the next interval.
  JsonObject Report(double t, double interval_s) {
    absl::MutexLock lock(&mu_);
    JsonObject json;
    json.Add("t", t);
    AddSyncs(&json, &interval_, interval_s);
    interval_.clear();
    return json;
  }
  JsonObject Final(double seconds) {
    absl::MutexLock lock(&mu_);
    std::vector<double> all(all_.begin(), all_.end());
    JsonObject json;
    json.Add("final", true)
        .Add("clients", absl::GetFlag(FLAGS_clients))
        .Add("floats", absl::GetFlag(FLAGS_floats))
        .Add("seconds", seconds);
    AddSyncs(&json, &all, seconds);
    return json;
  }
  int errors() {
    absl::MutexLock lock(&mu_);
    return errors_;
  }

 private:
  // The totals, and the rate and percentiles of `window` (sync times over `seconds`).
  void AddSyncs(JsonObject* json, std::vector<double>* window, double seconds)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    json->Add("syncs", static_cast<uint64_t>(all_.size()))
        .Add("syncs_per_s", static_cast<double>(window->size()) / seconds)
        .Add("sync_ms_p50", Percentile(window, 0.50))
        .Add("sync_ms_p99", Percentile(window, 0.99))
        .Add("errors", errors_)
        .Add("churns", churns_.load())
        .Add("stale_refusals", stale_.load());
  }
  static double Percentile(std::vector<double>* v, double q) {
    if (v->empty()) return 0.0;
    const size_t i = std::min(v->size() - 1, static_cast<size_t>(q * v->size()));
    std::nth_element(v->begin(), v->begin() + i, v->end());
    return (*v)[i];
  }

  absl::Mutex mu_;
  std::vector<double> interval_ ABSL_GUARDED_BY(mu_);
  std::vector<float> all_ ABSL_GUARDED_BY(mu_);  // float: a 10-minute soak has millions
  int errors_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> churns_{0};
  std::atomic<uint64_t> stale_{0};
  std::atomic<bool> measuring_{false};
};

// What the clients share with the main thread.
struct LoadRun {
  Recorder recorder;
  std::atomic<int> warm_clients{0};  // clients that did their --warmup_syncs
  std::atomic<bool> stop{false};
};

absl::StatusOr<std::unique_ptr<Session>> JoinedSession(int index, const Layout& layout) {
  SessionOptions options;
  options.connection.servers = {absl::GetFlag(FLAGS_server)};
  options.connection.worker_name = "load-" + std::to_string(index);
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Connect(options);
  if (!session.ok()) return session.status();
  // The first to join uploads zeros as the initial model; the others take the server's.
  const uint64_t n = layout.size();
  if (absl::StatusOr<JoinedRun> joined = (*session)->Join({layout, std::vector<float>(n, 0.0f)});
      !joined.ok()) {
    return joined.status();
  }
  return session;
}

// One simulated worker until `stop`: sync, and every churn_rounds rounds leave and join anew.
void Client(int index, const Layout& layout, LoadRun* run) {
  Recorder* const recorder = &run->recorder;
  const int churn = absl::GetFlag(FLAGS_churn_rounds);
  const uint64_t warmup = static_cast<uint64_t>(std::max(0, absl::GetFlag(FLAGS_warmup_syncs)));
  uint64_t synced = 0;
  std::vector<float> change(layout.size());
  std::mt19937 random(static_cast<uint32_t>(index) + 1);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  for (float& c : change) c = normal(random);
  std::vector<float> params;
  uint64_t round = 0;
  while (!run->stop) {
    absl::StatusOr<std::unique_ptr<Session>> session = JoinedSession(index, layout);
    if (!session.ok()) {
      recorder->Error(session.status(), "join");
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    // The first session's length is spread over [1, churn], so that the clients do not all
    // leave in the same sync round.
    const int64_t rounds = churn == 0   ? INT64_MAX
                           : round == 0 ? 1 + static_cast<int64_t>(index) * churn /
                                                  std::max(absl::GetFlag(FLAGS_clients), 1)
                                        : churn;
    for (int64_t r = 0; r < rounds && !run->stop; ++r, ++round) {
      const absl::Span<const float> model = (*session)->model();
      params.assign(model.begin(), model.end());
      const float sign = round % 2 ? -1.0f : 1.0f;
      for (size_t i = 0; i < params.size(); ++i) params[i] += sign * change[i];
      const absl::Time start = absl::Now();
      UpdateInfo info;
      info.round = round + 1;
      absl::StatusOr<RoundResult> result = (*session)->Sync(absl::MakeSpan(params), info);
      if (!result.ok()) {
        recorder->Error(result.status(), "sync");
        break;  // a new session
      }
      recorder->Round(absl::ToDoubleMilliseconds(absl::Now() - start));
      recorder->Stale(result->stale_refusals);
      if (++synced == warmup) ++run->warm_clients;
    }
    if (absl::Status left = (*session)->Leave(); !left.ok()) recorder->Error(left, "leave");
    if (churn > 0) recorder->Churned();
  }
}

// Until every client did its --warmup_syncs; false after --warmup_timeout.
bool WaitForWarmUp(const LoadRun& run, absl::Time launched) {
  const absl::Time give_up = absl::Now() + absl::GetFlag(FLAGS_warmup_timeout);
  while (run.warm_clients < absl::GetFlag(FLAGS_clients)) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
  JsonObject json;
  json.Add("warm", true).Add("t", absl::ToDoubleSeconds(absl::Now() - launched));
  std::printf("%s\n", json.ToString().c_str());
  std::fflush(stdout);
  return true;
}

int Run() {
  absl::StatusOr<Layout> layout = Layout::Flat(absl::GetFlag(FLAGS_floats));
  if (!layout.ok()) {
    std::fprintf(stderr, "ps_load: %s\n", layout.status().ToString().c_str());
    return 2;
  }
  LoadRun run;
  std::vector<std::thread> clients;
  const absl::Time launched = absl::Now();
  for (int i = 0; i < absl::GetFlag(FLAGS_clients); ++i) {
    clients.emplace_back(Client, i, std::cref(*layout), &run);
  }
  auto stop_clients = [&] {
    run.stop = true;
    for (std::thread& c : clients) c.join();
  };
  if (absl::GetFlag(FLAGS_warmup_syncs) > 0 && !WaitForWarmUp(run, launched)) {
    stop_clients();
    std::fprintf(stderr, "ps_load: not every client did --warmup_syncs within --warmup_timeout\n");
    return 1;
  }
  run.recorder.StartMeasuring();
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::GetFlag(FLAGS_duration);
  const absl::Duration every = absl::GetFlag(FLAGS_report_every);
  for (absl::Time next = start + every; next < stop; next += every) {
    absl::SleepFor(next - absl::Now());
    const double t = absl::ToDoubleSeconds(absl::Now() - start);
    std::printf("%s\n", run.recorder.Report(t, absl::ToDoubleSeconds(every)).ToString().c_str());
    std::fflush(stdout);
  }
  absl::SleepFor(stop - absl::Now());
  stop_clients();
  std::printf("%s\n",
              run.recorder.Final(absl::ToDoubleSeconds(absl::Now() - start)).ToString().c_str());
  return run.recorder.errors() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ps

int main(int argc, char** argv) {
  ps::TuneMallocForLargeMessages();
  absl::ParseCommandLine(argc, argv);
  return ps::Run();
}
