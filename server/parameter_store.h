// The server's shard of the global model and its version. Knows nothing of gRPC.
#ifndef PS_SERVER_PARAMETER_STORE_H_
#define PS_SERVER_PARAMETER_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace ps {

// An immutable published model. Readers keep it alive as long as they stream it.
struct ModelSnapshot {
  uint64_t version = 0;
  std::shared_ptr<const std::vector<float>> values;
};

// Thread-safe. Versions start at 1 (the initial model) and grow by one per Apply; 0 means "no
// model" on the wire. Every published model is a new immutable vector (copy-on-write), so a Pull in
// progress never sees a half-applied update.
class ParameterStore {
 public:
  // `on_publish` is called with each new version after the store's lock is released.
  ParameterStore(std::vector<float> initial, std::function<void(uint64_t)> on_publish = nullptr);

  ModelSnapshot Snapshot() const;
  uint64_t version() const;
  size_t size() const { return size_; }

  // Copies the current model, lets `change` modify the copy, then publishes it as version + 1.
  // Returns the new version.
  uint64_t Apply(absl::FunctionRef<void(absl::Span<float>)> change);

 private:
  const size_t size_;
  std::function<void(uint64_t)> on_publish_;
  mutable absl::Mutex mu_;
  ModelSnapshot current_ ABSL_GUARDED_BY(mu_);
  // Serialises writers so that versions are published in order without holding mu_ while copying.
  absl::Mutex apply_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // A retired model vector that no reader holds any more, reused by the next Apply: a fresh
  // model-sized allocation per version costs more in page faults than the copy.
  std::shared_ptr<std::vector<float>> spare_ ABSL_GUARDED_BY(apply_mu_);
};

}  // namespace ps

#endif  // PS_SERVER_PARAMETER_STORE_H_
