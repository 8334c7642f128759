#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

TEST(Histogram, CountsByUpperBoundAndRendersCumulativeBuckets) {
  Histogram h({1.0, 2.0});
  for (double v : {0.5, 1.0, 1.5, 3.0, 10.0}) h.Observe(v);
  const Histogram::Snapshot s = h.Get();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{2, 1, 2}));  // <= 1, <= 2, above
  EXPECT_EQ(s.count, 5u);
  EXPECT_DOUBLE_EQ(s.sum, 16.0);
  MetricsText m;
  m.Histo("x_seconds", "Help.", s);
  EXPECT_EQ(m.text(),
            "# HELP x_seconds Help.\n# TYPE x_seconds histogram\n"
            "x_seconds_count 5\nx_seconds_sum 16\n"
            "x_seconds_bucket{le=\"1\"} 2\nx_seconds_bucket{le=\"2\"} 3\n"
            "x_seconds_bucket{le=\"+Inf\"} 5\n");
}

TEST(MetricsText, OneHeaderPerFamilyEscapedLabelsAndExactIntegers) {
  MetricsText m;
  m.Counter("a_total", "A.", 12345678901.0, {{"k", "v\"1\\\n"}})
      .Counter("a_total", "", 2, {{"k", "w"}})
      .Gauge("b", "B.", 0.125);
  EXPECT_EQ(m.text(),
            "# HELP a_total A.\n# TYPE a_total counter\n"
            "a_total{k=\"v\\\"1\\\\\\n\"} 12345678901\na_total{k=\"w\"} 2\n"
            "# HELP b B.\n# TYPE b gauge\nb 0.125\n");
}

int ConnectTo(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

// The whole answer to `request`, or what came before a 10 s silence (a generous bound that only
// catches a scrape held up behind other clients).
std::string Get(int port, const std::string& request) {
  const int fd = ConnectTo(port);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string answer;
  char buffer[1024];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) answer.append(buffer, n);
  close(fd);
  return answer;
}

std::vector<prometheus::MetricFamily> Up() {
  MetricsText m;
  m.Gauge("up", "Up.", 1);
  return m.TakeFamilies();
}

TEST(MetricsEndpoint, ServesMetricsAndNothingElse) {
  std::atomic<int> scrapes{0};
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", [&] {
    ++scrapes;
    return Up();
  });
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const int port = (*endpoint)->port();
  ASSERT_GT(port, 0);
  const std::string ok = Get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(ok, HasSubstr("200 OK"));
  EXPECT_THAT(ok, HasSubstr("Content-Type: text/plain"));
  EXPECT_THAT(ok, HasSubstr("\nup 1\n"));
  EXPECT_THAT(Get(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), HasSubstr("404"));
  EXPECT_EQ(scrapes, 1);
  EXPECT_EQ(MetricsEndpoint::Start("no-port", Up).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Issue 10, item 7: one client sending a byte a second, or 20 silent connections, held every
// scrape up (the hand-written exporter served one connection at a time).
TEST(MetricsEndpoint, SlowAndSilentClientsDoNotHoldAScrapeUp) {
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", Up);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const int port = (*endpoint)->port();
  std::vector<int> silent;
  for (int i = 0; i < 20; ++i) silent.push_back(ConnectTo(port));
  const int slow = ConnectTo(port);
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    for (const char c : std::string("GET /metrics HTTP/1.1\r\n")) {
      if (stop) break;
      send(slow, &c, 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // they are all connected first
  const std::string answer = Get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(answer, HasSubstr("\nup 1\n"));
  stop = true;
  trickle.join();
  for (int fd : silent) close(fd);
  close(slow);
}

}  // namespace
}  // namespace ps
