// In-memory datasets, the loaders that fill them, partitioning over workers, and mini-batches.
#ifndef PS_WORKER_DATA_DATASET_H_
#define PS_WORKER_DATA_DATASET_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/eigen_types.h"

namespace ps {

// Dense features, one row per example, and labels in [0, num_classes).
struct Dataset {
  RowMatrix features;
  std::vector<int32_t> labels;
  int num_classes = 0;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t dim() const { return features.cols(); }
  // The rows at `indices`, in that order.
  Dataset Subset(absl::Span<const int64_t> indices) const;
};

// Reads an IDX image file (magic 0x00000803) and label file (0x00000801), gzip-compressed or not.
// Pixels are scaled to [0, 1]. `limit` > 0 keeps only the first `limit` examples. Errors name the
// file and what is wrong with it (NOT_FOUND, or INVALID_ARGUMENT with the byte offset).
absl::StatusOr<Dataset> LoadIdx(const std::string& images_path, const std::string& labels_path,
                                int64_t limit = 0);

// Fashion-MNIST from a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train, int64_t limit = 0);

// Reads LIBSVM text ("label index:value ...", indices from 1) into dense rows of `dim` features.
// Labels -1 and +1 become 0 and 1; other labels must be integers in [0, num_classes). Errors name
// the file, line and token.
absl::StatusOr<Dataset> LoadLibsvm(const std::string& path, int dim, int num_classes,
                                   int64_t limit = 0);

enum class PartitionScheme { kIid, kLabelSorted };

// The example indices worker `rank` of `num_workers` trains on: disjoint blocks that cover the
// dataset, sizes differing by at most one. kIid shuffles with `seed` first; kLabelSorted sorts by
// label so that each worker sees few classes (a non-IID stress case).
std::vector<int64_t> PartitionIndices(const Dataset& data, int num_workers, int rank,
                                      PartitionScheme scheme, uint64_t seed);

// Draws mini-batches without replacement, reshuffling at every epoch. Not thread-safe.
class BatchSampler {
 public:
  BatchSampler(const Dataset* data, int batch_size, uint64_t seed);
  // Fills *batch_x and *labels with the next batch (always batch_size rows; the last batch of an
  // epoch is completed from the next epoch's order).
  void Next(RowMatrix* batch_x, std::vector<int32_t>* labels);
  int64_t epochs_started() const { return epochs_started_; }

 private:
  void Reshuffle();

  const Dataset* data_;
  int batch_size_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
  size_t position_ = 0;
  int64_t epochs_started_ = 0;
};

}  // namespace ps

#endif  // PS_WORKER_DATA_DATASET_H_
