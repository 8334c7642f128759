#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

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
            "x_seconds_bucket{le=\"1\"} 2\nx_seconds_bucket{le=\"2\"} 3\n"
            "x_seconds_bucket{le=\"+Inf\"} 5\nx_seconds_sum 16\nx_seconds_count 5\n");
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

std::string Get(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string answer;
  char buffer[1024];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof buffer, 0)) > 0) answer.append(buffer, n);
  close(fd);
  return answer;
}

TEST(MetricsEndpoint, ServesMetricsAndNothingElse) {
  int scrapes = 0;
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", [&] {
    ++scrapes;
    return std::string("up 1\n");
  });
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const int port = (*endpoint)->port();
  ASSERT_GT(port, 0);
  const std::string ok = Get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(ok, HasSubstr("HTTP/1.0 200 OK"));
  EXPECT_THAT(ok, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(ok, HasSubstr("\r\n\r\nup 1\n"));
  EXPECT_THAT(Get(port, "GET / HTTP/1.1\r\n\r\n"), HasSubstr("404"));
  EXPECT_EQ(scrapes, 1);
  EXPECT_EQ(MetricsEndpoint::Start("no-port", [] { return std::string(); }).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ps
