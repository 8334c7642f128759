// Prometheus text exposition: a fixed-bucket histogram, a writer for the text format, and a tiny
// HTTP endpoint that serves GET /metrics from a callback. No dependency beyond POSIX sockets.
#ifndef PS_COMMON_METRICS_H_
#define PS_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace ps {

// Counts of observations by upper bound (plus +Inf), their sum and count. Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; the last one is +Inf
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot Get() const;

 private:
  const std::vector<double> upper_bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);
  double sum_ ABSL_GUARDED_BY(mu_) = 0.0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

using Labels = std::vector<std::pair<std::string, std::string>>;

// Builds a text-format (version 0.0.4) exposition. Each family gets its HELP and TYPE lines once,
// before its first sample; label values are escaped.
class MetricsText {
 public:
  MetricsText& Counter(absl::string_view name, absl::string_view help, double value,
                       const Labels& labels = {});
  MetricsText& Gauge(absl::string_view name, absl::string_view help, double value,
                     const Labels& labels = {});
  MetricsText& Histo(absl::string_view name, absl::string_view help,
                     const Histogram::Snapshot& histogram);
  const std::string& text() const { return text_; }

 private:
  void Family(absl::string_view name, absl::string_view help, absl::string_view type);
  void Sample(absl::string_view name, const Labels& labels, double value);

  std::string text_;
  std::vector<std::string> families_;
};

// Serves GET /metrics (anything else: 404) over plain HTTP/1.0 on its own port, one short
// connection at a time, from one thread. Thread-safe.
class MetricsEndpoint {
 public:
  // Binds `listen_address` (host:port; port 0 = the kernel's choice). UNAVAILABLE if it cannot.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen_address, std::function<std::string()> render);
  ~MetricsEndpoint();  // stops
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  void Serve();
  void Answer(int connection);

  int listen_fd_ = -1;
  int port_ = 0;
  std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace ps

#endif  // PS_COMMON_METRICS_H_
