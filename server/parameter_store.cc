#include "server/parameter_store.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/codec.h"
#include "common/logging.h"

namespace ps {

ParameterStore::ParameterStore(std::vector<float> initial, const StoreOptions& options,
                               std::function<void(uint64_t)> on_publish,
                               std::vector<float> broadcast)
    : size_(initial.size()), options_(options), on_publish_(std::move(on_publish)) {
  current_.version = std::max<uint64_t>(options.initial_version, 1);
  true_model_ = std::make_shared<std::vector<float>>(std::move(initial));
  current_.values = downlink_compressed() && broadcast.size() == size_
                        ? std::make_shared<std::vector<float>>(std::move(broadcast))
                        : true_model_;
  if (options.downlink_dqsgd.has_value()) downlink_bits_.emplace(*options.downlink_dqsgd);
}

double ParameterStore::mean_downlink_bits() const {
  const uint64_t deltas = downlink_deltas_.load();
  return deltas == 0 ? 0.0 : static_cast<double>(downlink_bits_sum_.load()) / deltas;
}

StoreState ParameterStore::State() const {
  absl::MutexLock lock(&mu_);
  StoreState state;
  state.version = current_.version;
  state.model = true_model_;
  if (downlink_compressed()) state.broadcast = current_.values;
  return state;
}

ModelSnapshot ParameterStore::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

std::shared_ptr<const std::vector<float>> ParameterStore::TrueModel() const {
  absl::MutexLock lock(&mu_);
  return true_model_;
}

uint64_t ParameterStore::version() const {
  absl::MutexLock lock(&mu_);
  return current_.version;
}

std::shared_ptr<std::vector<float>> ParameterStore::CopyOf(
    const std::vector<float>& source, std::shared_ptr<std::vector<float>>* spare) {
  std::shared_ptr<std::vector<float>> out = std::move(*spare);
  if (out == nullptr) return std::make_shared<std::vector<float>>(source);
  std::copy(source.begin(), source.end(), out->begin());
  return out;
}

std::shared_ptr<std::vector<float>> ParameterStore::Storage(
    std::shared_ptr<std::vector<float>>* spare) {
  std::shared_ptr<std::vector<float>> out = std::move(*spare);
  return out != nullptr ? out : std::make_shared<std::vector<float>>(size_);
}

void ParameterStore::Retire(std::shared_ptr<const std::vector<float>> old,
                            std::shared_ptr<std::vector<float>>* spare) {
  // Only `old` refers to it now unless a reader (a Pull in progress) still holds it; no new reader
  // can get it, so a count of one means it is free to reuse.
  if (old != nullptr && old.use_count() == 1) {
    *spare = std::const_pointer_cast<std::vector<float>>(std::move(old));
  }
}

uint64_t ParameterStore::Apply(absl::FunctionRef<void(absl::Span<float>)> change) {
  return *TryApply([&](absl::Span<float> model) {
    change(model);
    return absl::OkStatus();
  });
}

absl::StatusOr<uint64_t> ParameterStore::TryApply(
    absl::FunctionRef<absl::Status(absl::Span<float>)> change) {
  return TryPublish(1, [&](absl::Span<const float> current, absl::Span<float> next) {
    std::copy(current.begin(), current.end(), next.begin());
    return change(next);
  });
}

std::shared_ptr<std::vector<float>> ParameterStore::TakeStorage() {
  absl::MutexLock writer(&apply_mu_);
  return Storage(&spare_true_);
}

uint64_t ParameterStore::PublishFrom(
    std::shared_ptr<std::vector<float>> next,
    absl::FunctionRef<void(absl::Span<const float>, absl::Span<float>)> change) {
  uint64_t version;
  {
    absl::MutexLock writer(&apply_mu_);
    version = *PublishInto(1, std::move(next),
                           [&](absl::Span<const float> current, absl::Span<float> into) {
                             change(current, into);
                             return absl::OkStatus();
                           });
  }
  Notify(version);
  return version;
}

absl::StatusOr<uint64_t> ParameterStore::TryPublish(
    uint64_t versions,
    absl::FunctionRef<absl::Status(absl::Span<const float>, absl::Span<float>)> change,
    bool notify) {
  absl::StatusOr<uint64_t> version;
  {
    absl::MutexLock writer(&apply_mu_);
    version = PublishInto(versions, Storage(&spare_true_), change);
  }
  if (notify && version.ok()) Notify(*version);
  return version;
}

absl::StatusOr<uint64_t> ParameterStore::PublishInto(
    uint64_t versions, std::shared_ptr<std::vector<float>> next,
    absl::FunctionRef<absl::Status(absl::Span<const float>, absl::Span<float>)> change) {
  uint64_t version;
  {
    ModelSnapshot base;
    std::shared_ptr<const std::vector<float>> base_true;
    {
      absl::MutexLock lock(&mu_);
      base = current_;
      base_true = true_model_;
    }
    version = base.version + std::max<uint64_t>(versions, 1);
    if (absl::Status s = change(absl::MakeConstSpan(*base_true), absl::MakeSpan(*next)); !s.ok()) {
      spare_true_ = std::move(next);  // nothing published; the copy is reused next time
      return s;
    }

    ModelSnapshot published;
    published.version = version;
    published.values = next;
    if (downlink_compressed()) {
      // delta = x - x_b; c = Q(delta); x_b += decode(c). What Q drops stays in x - x_b and goes
      // out with the next version's delta (error feedback on the downlink).
      delta_scratch_.resize(size_);
      for (size_t i = 0; i < size_; ++i) delta_scratch_[i] = (*next)[i] - (*base.values)[i];
      v1::EncodingParams encoding = options_.downlink;
      encoding.set_seed(version * 0x9E3779B97F4A7C15ull + 0x5eed);
      if (downlink_bits_.has_value()) {
        double norm2 = 0.0;
        for (float v : delta_scratch_) norm2 += double{v} * v;
        encoding.set_bits(downlink_bits_->Choose(std::sqrt(norm2), 0, 0));
      }
      auto payload = std::make_shared<std::string>();
      if (EncodeInto(encoding, delta_scratch_, payload.get()).ok()) {
        downlink_bits_sum_ += encoding.encoding() == v1::ENCODING_QSGD ? encoding.bits() : 16;
        ++downlink_deltas_;
        std::shared_ptr<std::vector<float>> broadcast = CopyOf(*base.values, &spare_broadcast_);
        // Our own encoding of finite values: valid by construction.
        DecodeAccumulateValidated(encoding, *payload, 1.0f, absl::MakeSpan(*broadcast));
        published.values = broadcast;
        published.deltas = base.deltas;
        published.deltas.push_back({base.version, version, encoding, std::move(payload)});
        if (published.deltas.size() > options_.max_delta_chain) {
          published.deltas.erase(published.deltas.begin());
        }
      } else {
        // Only a non-finite model gets here; workers then get it in full (and see the problem).
        LogError("downlink delta could not be encoded; sending the full model");
      }
    }
    std::shared_ptr<const std::vector<float>> old_true, old_broadcast;
    {
      absl::MutexLock lock(&mu_);
      old_true = std::move(true_model_);
      old_broadcast = std::move(current_.values);
      true_model_ = next;
      current_ = std::move(published);
    }
    base = ModelSnapshot();
    base_true.reset();
    if (old_broadcast == old_true) old_broadcast.reset();  // one vector when not compressed
    Retire(std::move(old_true), &spare_true_);
    Retire(std::move(old_broadcast), &spare_broadcast_);
  }
  return version;
}

}  // namespace ps
