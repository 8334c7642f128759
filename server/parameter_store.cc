#include "server/parameter_store.h"

#include <utility>

namespace ps {

ParameterStore::ParameterStore(std::vector<float> initial,
                               std::function<void(uint64_t)> on_publish)
    : size_(initial.size()), on_publish_(std::move(on_publish)) {
  current_.version = 1;
  current_.values = std::make_shared<const std::vector<float>>(std::move(initial));
}

ModelSnapshot ParameterStore::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

uint64_t ParameterStore::version() const {
  absl::MutexLock lock(&mu_);
  return current_.version;
}

uint64_t ParameterStore::Apply(absl::FunctionRef<void(absl::Span<float>)> change) {
  uint64_t version;
  {
    absl::MutexLock writer(&apply_mu_);
    ModelSnapshot base = Snapshot();
    auto next = std::make_shared<std::vector<float>>(*base.values);
    change(absl::MakeSpan(*next));
    absl::MutexLock lock(&mu_);
    current_.values = std::move(next);
    version = ++current_.version;
  }
  if (on_publish_) on_publish_(version);
  return version;
}

}  // namespace ps
