// The C++ reference for bench/python_binding.py: one Session pushes an update of --floats values
// and pulls the next model back (Session::Push), as fast as it can for --duration. The Python side
// runs the same loop through slowlink; the ratio of the two is the binding's cost.
// Prints one JSON line.
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "app/malloc_tuning.h"
#include "client/session.h"
#include "common/json_writer.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "ps-server address (async, no model yet).");
ABSL_FLAG(uint64_t, floats, 1000000, "Model size.");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(5), "How long to push.");

namespace ps {
namespace {

int Run() {
  SessionOptions options;
  options.connection.servers = {absl::GetFlag(FLAGS_server)};
  options.connection.worker_name = "cpp-bench";
  auto session = Session::Connect(options);
  const uint64_t n = absl::GetFlag(FLAGS_floats);
  absl::StatusOr<Layout> layout = Layout::Create({{"params", {n}}});
  if (!session.ok() || !layout.ok()) return 1;
  if (auto joined = (*session)->Join({*layout, std::vector<float>(n, 0.0f)}); !joined.ok()) {
    std::fprintf(stderr, "%s\n", joined.status().ToString().c_str());
    return 1;
  }
  const std::vector<float> update(n, 1e-3f);
  uint64_t pushes = 0;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + absl::GetFlag(FLAGS_duration);
  while (absl::Now() < stop) {
    if (auto r = (*session)->Push(update, {}); !r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
    ++pushes;
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  JsonObject json;
  json.Add("client", "cpp")
      .Add("floats", n)
      .Add("pushes", pushes)
      .Add("seconds", seconds)
      .Add("pushes_per_s", pushes / seconds);
  std::printf("%s\n", json.ToString().c_str());
  return (*session)->Leave().ok() ? 0 : 1;
}

}  // namespace
}  // namespace ps

int main(int argc, char** argv) {
  ps::TuneMallocForLargeMessages();
  absl::ParseCommandLine(argc, argv);
  return ps::Run();
}
