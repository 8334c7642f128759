#include "worker/data/dataset.h"

#include <algorithm>
#include <numeric>

namespace ps {

Dataset Dataset::Subset(absl::Span<const int64_t> indices) const {
  Dataset out;
  out.num_classes = num_classes;
  out.features.resize(static_cast<Eigen::Index>(indices.size()), features.cols());
  out.labels.resize(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    out.features.row(static_cast<Eigen::Index>(i)) = features.row(indices[i]);
    out.labels[i] = labels[indices[i]];
  }
  return out;
}

std::vector<int64_t> PartitionIndices(const Dataset& data, int num_workers, int rank,
                                      PartitionScheme scheme, uint64_t seed) {
  std::vector<int64_t> all(data.size());
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  if (scheme == PartitionScheme::kLabelSorted) {
    std::stable_sort(all.begin(), all.end(),
                     [&data](int64_t a, int64_t b) { return data.labels[a] < data.labels[b]; });
  }
  const int64_t n = data.size();
  const int64_t begin = n * rank / num_workers;
  const int64_t end = n * (rank + 1) / num_workers;
  return std::vector<int64_t>(all.begin() + begin, all.begin() + end);
}

BatchSampler::BatchSampler(const Dataset* data, int batch_size, uint64_t seed)
    : data_(data), batch_size_(batch_size), rng_(seed), order_(data->size()) {
  std::iota(order_.begin(), order_.end(), 0);
  Reshuffle();
}

void BatchSampler::Reshuffle() {
  std::shuffle(order_.begin(), order_.end(), rng_);
  position_ = 0;
  ++epochs_started_;
}

void BatchSampler::Next(RowMatrix* batch_x, std::vector<int32_t>* labels) {
  batch_x->resize(batch_size_, data_->dim());
  labels->resize(batch_size_);
  for (int i = 0; i < batch_size_; ++i) {
    if (position_ == order_.size()) Reshuffle();
    const int64_t row = order_[position_++];
    batch_x->row(i) = data_->features.row(row);
    (*labels)[i] = data_->labels[row];
  }
}

}  // namespace ps
