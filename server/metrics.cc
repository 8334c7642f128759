#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <exception>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {
Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  const size_t bucket =
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
  absl::MutexLock lock(&mu_);
  ++counts_[bucket];
  sum_ += value;
  ++count_;
}

Histogram::Snapshot Histogram::Get() const {
  absl::MutexLock lock(&mu_);
  return {upper_bounds_, counts_, sum_, count_};
}

prometheus::ClientMetric& MetricsText::Sample(absl::string_view name, absl::string_view help,
                                              prometheus::MetricType type, const Labels& labels) {
  auto family = std::find_if(families_.begin(), families_.end(),
                             [&](const prometheus::MetricFamily& f) { return f.name == name; });
  if (family == families_.end()) {
    families_.push_back(prometheus::MetricFamily{std::string(name), std::string(help), type, {}});
    family = families_.end() - 1;
  }
  prometheus::ClientMetric& metric = family->metric.emplace_back();
  for (const auto& [key, value] : labels) metric.label.push_back({key, value});
  return metric;
}

MetricsText& MetricsText::Counter(absl::string_view name, absl::string_view help, double value,
                                  const Labels& labels) {
  Sample(name, help, prometheus::MetricType::Counter, labels).counter.value = value;
  return *this;
}

MetricsText& MetricsText::Gauge(absl::string_view name, absl::string_view help, double value,
                                const Labels& labels) {
  Sample(name, help, prometheus::MetricType::Gauge, labels).gauge.value = value;
  return *this;
}

MetricsText& MetricsText::Histo(absl::string_view name, absl::string_view help,
                                const Histogram::Snapshot& h) {
  prometheus::ClientMetric& metric = Sample(name, help, prometheus::MetricType::Histogram, {});
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    metric.histogram.bucket.push_back({cumulative, i < h.upper_bounds.size()
                                                       ? h.upper_bounds[i]
                                                       : std::numeric_limits<double>::infinity()});
  }
  metric.histogram.sample_count = h.count;
  metric.histogram.sample_sum = h.sum;
  return *this;
}

std::string MetricsText::text() const { return prometheus::TextSerializer().Serialize(families_); }

class MetricsEndpoint::Collector : public prometheus::Collectable {
 public:
  explicit Collector(std::function<std::vector<prometheus::MetricFamily>()> collect)
      : collect_(std::move(collect)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return collect_(); }

 private:
  std::function<std::vector<prometheus::MetricFamily>()> collect_;
};

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen_address,
    std::function<std::vector<prometheus::MetricFamily>()> collect) {
  const size_t colon = listen_address.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen_address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address ", listen_address, " is not host:port"));
  }
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->collector_ = std::make_shared<Collector>(std::move(collect));
  // Threads and a per-request timeout: a client that sends one byte a second, or connects and
  // says nothing, holds one thread for at most the timeout; scrapers use the others.
  const std::vector<std::string> options = {
      "listening_ports",    listen_address, "num_threads",       "16",
      "request_timeout_ms", "3000",         "enable_keep_alive", "no"};
  try {
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen_address, ": ", e.what()));
  }
  endpoint->exposer_->RegisterCollectable(endpoint->collector_);
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  endpoint->port_ = ports.empty() ? 0 : ports.front();
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  exposer_.reset();  // stops serving before the collector goes
}

}  // namespace ps
