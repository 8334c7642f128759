#include "server/parameter_store.h"

#include <algorithm>
#include <utility>

namespace ps {

ParameterStore::ParameterStore(std::vector<float> initial,
                               std::function<void(uint64_t)> on_publish)
    : size_(initial.size()), on_publish_(std::move(on_publish)) {
  current_.version = 1;
  current_.values = std::make_shared<std::vector<float>>(std::move(initial));
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
    std::shared_ptr<std::vector<float>> next = std::move(spare_);
    if (next == nullptr) {
      next = std::make_shared<std::vector<float>>(*base.values);
    } else {
      std::copy(base.values->begin(), base.values->end(), next->begin());
    }
    change(absl::MakeSpan(*next));
    std::shared_ptr<const std::vector<float>> retired;
    {
      absl::MutexLock lock(&mu_);
      retired = std::move(current_.values);
      current_.values = next;
      version = ++current_.version;
    }
    base.values.reset();
    // Only `retired` refers to the old model now unless a reader (a Pull in progress) still
    // holds it; no new reader can get it, so a count of one means it is free to reuse.
    if (retired.use_count() == 1) {
      spare_ = std::const_pointer_cast<std::vector<float>>(std::move(retired));
    }
  }
  if (on_publish_) on_publish_(version);
  return version;
}

}  // namespace ps
