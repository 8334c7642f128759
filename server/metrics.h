// Prometheus metrics: a fixed-bucket histogram, a builder of metric families, and the HTTP endpoint
// that serves GET /metrics from a callback. Families, the text format and the HTTP server are
// Debian's prometheus-cpp (its pull exporter runs on civetweb with a pool of threads).
#ifndef PS_SERVER_METRICS_H_
#define PS_SERVER_METRICS_H_

#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

// Builds the metric families of one scrape. Samples of one name go into one family (its help and
// type from the first); text() is the text format (version 0.0.4), label values escaped.
class MetricsText {
 public:
  MetricsText& Counter(absl::string_view name, absl::string_view help, double value,
                       const Labels& labels = {});
  MetricsText& Gauge(absl::string_view name, absl::string_view help, double value,
                     const Labels& labels = {});
  MetricsText& Histo(absl::string_view name, absl::string_view help,
                     const Histogram::Snapshot& histogram);
  std::vector<prometheus::MetricFamily> TakeFamilies() { return std::move(families_); }
  std::string text() const;

 private:
  prometheus::ClientMetric& Sample(absl::string_view name, absl::string_view help,
                                   prometheus::MetricType type, const Labels& labels);

  std::vector<prometheus::MetricFamily> families_;
};

// Serves GET /metrics (anything else: 404) over plain HTTP on its own port, from a pool of
// threads, each connection bounded by a request timeout, so that slow or silent clients cannot
// hold a scrape up. Thread-safe; `collect` is called from the pool's threads.
class MetricsEndpoint {
 public:
  // Binds `listen_address` (host:port; port 0 = the kernel's choice). INVALID_ARGUMENT for an
  // address that is not host:port, UNAVAILABLE if it cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen_address,
      std::function<std::vector<prometheus::MetricFamily>()> collect);
  ~MetricsEndpoint();  // stops
  int port() const { return port_; }

 private:
  class Collector;
  MetricsEndpoint() = default;

  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace ps

#endif  // PS_SERVER_METRICS_H_
