// The server's shard of the global model, its version, and (with a compressed downlink) the
// broadcast model that workers hold. Knows nothing of gRPC.
#ifndef PS_SERVER_PARAMETER_STORE_H_
#define PS_SERVER_PARAMETER_STORE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/dq_sgd.h"
#include "ps/v1/ps.pb.h"

namespace ps {

// The quantized change of the broadcast model from base_version to version.
struct DownlinkDelta {
  uint64_t base_version = 0;
  uint64_t version = 0;
  v1::EncodingParams encoding;
  std::shared_ptr<const std::string> payload;
};

// An immutable published state. Readers keep it alive as long as they stream it.
struct ModelSnapshot {
  uint64_t version = 0;
  // What workers hold: the broadcast model x_b (docs/algorithms.md section 9), which is the true
  // model itself when the downlink is not compressed.
  std::shared_ptr<const std::vector<float>> values;
  // The most recent deltas, consecutive, oldest first, the last one ending at `version`; empty when
  // the downlink is not compressed.
  std::vector<DownlinkDelta> deltas;
};

struct StoreOptions {
  // QSGD: each new version also produces a quantized delta of the broadcast model. Anything else:
  // the downlink is not compressed.
  v1::EncodingParams downlink;
  // With QSGD: each delta's bits by DQ-SGD's rule from its norm (with error feedback, the norm of
  // x - x_b) against the first deltas' norms, instead of downlink.bits(). The run's length is
  // not known here, so the bits follow the norm only (as with dq_alpha = 1).
  std::optional<DqSgdOptions> downlink_dqsgd;
  size_t max_delta_chain = 8;    // deltas kept for workers a few versions behind
  uint64_t initial_version = 1;  // > 1 when resuming from a checkpoint
};

// A consistent view for a checkpoint: the true model and the broadcast model of one version.
struct StoreState {
  uint64_t version = 0;
  std::shared_ptr<const std::vector<float>> model;
  std::shared_ptr<const std::vector<float>> broadcast;  // null unless the downlink is compressed
};

// Thread-safe. Versions start at 1 (the initial model) and grow by one per Apply (by n for a
// TryPublish of a batch of n updates); 0 means "no model" on the wire. Every published state is
// immutable (copy-on-write), so a Pull in progress never sees a half-applied update.
class ParameterStore {
 public:
  // `on_publish` is called with each new version after the store's locks are released.
  // `broadcast` (a resumed broadcast model) is used only with a compressed downlink; empty = the
  // same as `initial`.
  ParameterStore(std::vector<float> initial, const StoreOptions& options = {},
                 std::function<void(uint64_t)> on_publish = nullptr,
                 std::vector<float> broadcast = {});

  ModelSnapshot Snapshot() const;
  // The model the aggregator updates (x). Equal to Snapshot().values without downlink compression.
  std::shared_ptr<const std::vector<float>> TrueModel() const;
  uint64_t version() const;
  StoreState State() const;
  size_t size() const { return size_; }
  // Deltas of the broadcast model (QSGD, FP16 or BF16) instead of the full model every time.
  bool downlink_compressed() const {
    const v1::Encoding e = options_.downlink.encoding();
    return e == v1::ENCODING_QSGD || e == v1::ENCODING_FP16 || e == v1::ENCODING_BF16;
  }
  // Bits per coordinate of the downlink deltas so far, averaged (0 before the first one).
  double mean_downlink_bits() const;

  // Copies the current model, lets `change` modify the copy, then publishes it as version + 1
  // (with the new broadcast model and delta when the downlink is compressed). Returns the version.
  uint64_t Apply(absl::FunctionRef<void(absl::Span<float>)> change);
  // Apply for a change that can fail: when `change` returns an error, nothing is published (the
  // version stays) and the error is returned.
  absl::StatusOr<uint64_t> TryApply(absl::FunctionRef<absl::Status(absl::Span<float>)> change);
  // The general form: publishes version + `versions` (a batch of updates applied together counts
  // one version per update). `change` reads the current model and must write every coordinate of
  // the next one, whose storage it gets holding anything (so the copy and the update can be one
  // pass). With `notify` false the publish callback is not called: the caller calls Notify
  // once its own locks are released.
  absl::StatusOr<uint64_t> TryPublish(
      uint64_t versions,
      absl::FunctionRef<absl::Status(absl::Span<const float>, absl::Span<float>)> change,
      bool notify = true);
  // A vector of the model's size with any contents, for a caller that builds the next version in
  // it (a sync round's mean): the retired version when no reader holds it, else a new one.
  std::shared_ptr<std::vector<float>> TakeStorage();
  // Publishes version + 1 from `next`, storage from TakeStorage that `change` turns into the next
  // model reading the current one: what the caller accumulated there becomes the new version
  // without another model-sized buffer.
  uint64_t PublishFrom(std::shared_ptr<std::vector<float>> next,
                       absl::FunctionRef<void(absl::Span<const float>, absl::Span<float>)> change);
  void Notify(uint64_t version) {
    if (on_publish_) on_publish_(version);
  }

 private:
  // A vector of size_ holding a copy of `source`, reusing a retired one when there is one: a fresh
  // model-sized allocation per version costs more in page faults than the copy.
  std::shared_ptr<std::vector<float>> CopyOf(const std::vector<float>& source,
                                             std::shared_ptr<std::vector<float>>* spare);
  // A vector of size_ with any contents: the spare if there is one.
  std::shared_ptr<std::vector<float>> Storage(std::shared_ptr<std::vector<float>>* spare);
  static void Retire(std::shared_ptr<const std::vector<float>> old,
                     std::shared_ptr<std::vector<float>>* spare);
  // TryPublish's work once `next` (of size_) is the storage: change, broadcast, delta, publish.
  absl::StatusOr<uint64_t> PublishInto(
      uint64_t versions, std::shared_ptr<std::vector<float>> next,
      absl::FunctionRef<absl::Status(absl::Span<const float>, absl::Span<float>)> change)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_);

  const size_t size_;
  const StoreOptions options_;
  std::function<void(uint64_t)> on_publish_;

  // Serialises writers so that versions are published in order without holding mu_ while copying.
  absl::Mutex apply_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::shared_ptr<std::vector<float>> spare_true_ ABSL_GUARDED_BY(apply_mu_);
  std::shared_ptr<std::vector<float>> spare_broadcast_ ABSL_GUARDED_BY(apply_mu_);
  std::vector<float> delta_scratch_ ABSL_GUARDED_BY(apply_mu_);
  std::optional<DqSgdBitChooser> downlink_bits_ ABSL_GUARDED_BY(apply_mu_);
  std::atomic<uint64_t> downlink_bits_sum_{0};
  std::atomic<uint64_t> downlink_deltas_{0};

  mutable absl::Mutex mu_;
  ModelSnapshot current_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::vector<float>> true_model_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ps

#endif  // PS_SERVER_PARAMETER_STORE_H_
