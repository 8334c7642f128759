// A model's layout: its named tensors, in order, each a row-major float32 array of some shape,
// concatenated into the one flat vector of coordinates that the server stores, shards split by
// key range and every message carries (docs/layouts.md). The server knows nothing else of a
// model; any training code that can name its tensors can use it.
#ifndef PS_COMMON_LAYOUT_H_
#define PS_COMMON_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ps/v1/ps.pb.h"

namespace ps {

struct TensorShape {
  std::string name;
  std::vector<uint64_t> shape;  // empty = a scalar (one value)
  uint64_t size() const;
  // "name [3, 4]"
  std::string ToString() const;
};

// Immutable once made; thread-safe to share.
class Layout {
 public:
  // Limits on what a layout may hold (a layout is also what an unknown client sends at Join).
  static constexpr size_t kMaxTensors = 1 << 16;
  static constexpr size_t kMaxNameBytes = 256;
  static constexpr uint64_t kMaxSize = uint64_t{1} << 34;  // coordinates: 64 GiB of float32

  Layout() = default;
  // INVALID_ARGUMENT naming the first problem: no tensors, an empty, over-long, non-printable or
  // repeated name, a dimension of 0, or more than kMaxSize coordinates in all.
  static absl::StatusOr<Layout> Create(std::vector<TensorShape> tensors);
  // One flat tensor of n coordinates (--model_size).
  static absl::StatusOr<Layout> Flat(uint64_t n, absl::string_view name = "params");
  static absl::StatusOr<Layout> FromProto(const v1::ModelLayout& proto);
  // Text ("name dim dim ..." per line, # comments) or JSON ({"tensors": [{"name": ..., "shape":
  // [...]}]}, or just the list), told apart by the first character.
  static absl::StatusOr<Layout> Parse(absl::string_view text);
  // Parse of a file's contents; errors name the file.
  static absl::StatusOr<Layout> ReadFile(const std::string& path);

  v1::ModelLayout ToProto() const;
  const std::vector<TensorShape>& tensors() const { return tensors_; }
  bool empty() const { return tensors_.empty(); }
  uint64_t size() const { return size_; }  // coordinates in all
  // Where tensor i starts in the flat vector.
  uint64_t offset(size_t i) const { return offsets_[i]; }
  // 16 hex digits of a hash of the names and shapes: equal layouts have equal fingerprints.
  std::string Fingerprint() const;
  // "3 tensors, 7,850 coordinates: weights [10, 784], bias [10]" (the first few tensors).
  std::string Summary() const;

  bool operator==(const Layout& other) const;
  bool operator!=(const Layout& other) const { return !(*this == other); }

 private:
  std::vector<TensorShape> tensors_;
  std::vector<uint64_t> offsets_;
  uint64_t size_ = 0;
};

// A model's layout and its values, concatenated in the layout's order.
struct ModelValues {
  Layout layout;
  std::vector<float> values;
};

// OK if `theirs` equals `ours`; else FAILED_PRECONDITION naming the first tensor that differs
// and both shapes (`whose` says whose `ours` is in the message, e.g. "the server's").
absl::Status CheckSameLayout(const Layout& ours, const Layout& theirs, absl::string_view whose);

// The coordinates [begin, end) of the model a shard holds. Shard i of n owns [d*i/n, d*(i+1)/n) of
// a model of d coordinates: contiguous key ranges that differ by at most one.
struct KeyRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size() const { return end - begin; }
};
KeyRange ShardRange(uint64_t model_size, uint32_t shard_index, uint32_t shard_count);

}  // namespace ps

#endif  // PS_COMMON_LAYOUT_H_
