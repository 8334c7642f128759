#include "common/layout.h"

#include <google/protobuf/util/json_util.h>

#include <cctype>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace ps {
namespace {

bool PrintableName(absl::string_view name) {
  for (char c : name) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

absl::Status CheckTensor(const TensorShape& t, size_t index) {
  if (t.name.empty())
    return absl::InvalidArgumentError(absl::StrCat("tensor ", index, " has no name"));
  if (t.name.size() > Layout::kMaxNameBytes || !PrintableName(t.name)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor %d: a name is 1 to %d printable characters without spaces", index,
                        Layout::kMaxNameBytes));
  }
  for (uint64_t dim : t.shape) {
    if (dim == 0 || dim > Layout::kMaxSize) {
      return absl::InvalidArgumentError(
          absl::StrFormat("tensor '%s' has a dimension of %d; each must be in [1, %d]", t.name, dim,
                          Layout::kMaxSize));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Layout> ParseTextLayout(absl::string_view text) {
  std::vector<TensorShape> tensors;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    TensorShape t;
    t.name = std::string(words[0]);
    for (size_t i = 1; i < words.size(); ++i) {
      uint64_t dim = 0;
      if (!absl::SimpleAtoi(words[i], &dim)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("line %d: '%s' is not a dimension (a line is: name dim dim ...)",
                            line_number, words[i]));
      }
      t.shape.push_back(dim);
    }
    tensors.push_back(std::move(t));
  }
  return Layout::Create(std::move(tensors));
}

absl::StatusOr<Layout> ParseJsonLayout(absl::string_view text) {
  std::string json(text);
  if (!absl::StripLeadingAsciiWhitespace(text).empty() &&
      absl::StripLeadingAsciiWhitespace(text)[0] == '[') {
    json = absl::StrCat("{\"tensors\": ", text, "}");
  }
  v1::ModelLayout proto;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &proto, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a layout in JSON ({\"tensors\": [{\"name\": ..., \"shape\": [...]}, ...]}): ",
        status.message().as_string()));
  }
  return Layout::FromProto(proto);
}

}  // namespace

uint64_t TensorShape::size() const {
  uint64_t n = 1;
  for (uint64_t dim : shape) n *= dim;
  return n;
}

std::string TensorShape::ToString() const {
  return absl::StrCat(name, " [", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Layout> Layout::Create(std::vector<TensorShape> tensors) {
  if (tensors.empty()) return absl::InvalidArgumentError("a layout needs at least one tensor");
  if (tensors.size() > kMaxTensors) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d tensors; a layout holds at most %d", tensors.size(), kMaxTensors));
  }
  Layout layout;
  absl::flat_hash_set<absl::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    PS_RETURN_IF_ERROR(CheckTensor(tensors[i], i));
    if (!names.insert(tensors[i].name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name '", tensors[i].name, "' appears twice"));
    }
    // Checked dimension by dimension, so that the product cannot overflow.
    uint64_t n = 1;
    for (uint64_t dim : tensors[i].shape) {
      if (n > kMaxSize / dim)
        n = kMaxSize + 1;
      else
        n *= dim;
    }
    if (n > kMaxSize - layout.size_) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the layout has more than %d coordinates (at tensor '%s')", kMaxSize, tensors[i].name));
    }
    layout.offsets_.push_back(layout.size_);
    layout.size_ += n;
  }
  layout.tensors_ = std::move(tensors);
  return layout;
}

absl::StatusOr<Layout> Layout::Flat(uint64_t n, absl::string_view name) {
  if (n == 0) return absl::InvalidArgumentError("a model needs at least one coordinate");
  return Create({TensorShape{std::string(name), {n}}});
}

absl::StatusOr<Layout> Layout::FromProto(const v1::ModelLayout& proto) {
  if (proto.tensors_size() > static_cast<int>(kMaxTensors)) {
    return absl::InvalidArgumentError(absl::StrFormat("%d tensors; a layout holds at most %d",
                                                      proto.tensors_size(), kMaxTensors));
  }
  std::vector<TensorShape> tensors;
  tensors.reserve(proto.tensors_size());
  for (const v1::TensorSpec& t : proto.tensors()) {
    tensors.push_back(TensorShape{t.name(), {t.shape().begin(), t.shape().end()}});
  }
  return Create(std::move(tensors));
}

absl::StatusOr<Layout> Layout::Parse(absl::string_view text) {
  const absl::string_view start = absl::StripLeadingAsciiWhitespace(text);
  if (!start.empty() && (start[0] == '{' || start[0] == '[')) return ParseJsonLayout(text);
  return ParseTextLayout(text);
}

absl::StatusOr<Layout> Layout::ReadFile(const std::string& path) {
  PS_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 64 << 20));
  absl::StatusOr<Layout> layout = Parse(text);
  if (!layout.ok()) {
    return absl::Status(layout.status().code(),
                        absl::StrCat(path, ": ", layout.status().message()));
  }
  return layout;
}

v1::ModelLayout Layout::ToProto() const {
  v1::ModelLayout proto;
  for (const TensorShape& t : tensors_) {
    v1::TensorSpec* out = proto.add_tensors();
    out->set_name(t.name);
    for (uint64_t dim : t.shape) out->add_shape(dim);
  }
  return proto;
}

std::string Layout::Fingerprint() const {
  // FNV-1a over each name, its rank and dimensions: stable across builds and machines.
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  };
  for (const TensorShape& t : tensors_) {
    mix(t.name.data(), t.name.size());
    const uint64_t rank = t.shape.size();
    mix("\0", 1);
    mix(&rank, sizeof rank);
    for (uint64_t dim : t.shape) mix(&dim, sizeof dim);
  }
  return absl::StrFormat("%016x", h);
}

std::string Layout::Summary() const {
  constexpr size_t kShown = 4;
  std::vector<std::string> shown;
  for (size_t i = 0; i < tensors_.size() && i < kShown; ++i)
    shown.push_back(tensors_[i].ToString());
  if (tensors_.size() > kShown)
    shown.push_back(absl::StrCat("... (", tensors_.size() - kShown, " more)"));
  return absl::StrFormat("%d tensors, %d coordinates: %s", tensors_.size(), size_,
                         absl::StrJoin(shown, ", "));
}

bool Layout::operator==(const Layout& other) const {
  if (tensors_.size() != other.tensors_.size()) return false;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].name != other.tensors_[i].name ||
        tensors_[i].shape != other.tensors_[i].shape) {
      return false;
    }
  }
  return true;
}

absl::Status CheckSameLayout(const Layout& ours, const Layout& theirs, absl::string_view whose) {
  const auto& a = ours.tensors();
  const auto& b = theirs.tensors();
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < a.size() && i < b.size() && a[i].name == b[i].name && a[i].shape == b[i].shape) {
      continue;
    }
    const std::string mine = i < b.size() ? b[i].ToString() : "nothing (it has fewer tensors)";
    const std::string other = i < a.size() ? a[i].ToString() : "nothing (it has fewer tensors)";
    return absl::FailedPreconditionError(absl::StrFormat(
        "the model's layout differs from %s at tensor %d: this one has %s, %s has %s", whose, i,
        mine, whose, other));
  }
  return absl::OkStatus();
}

KeyRange ShardRange(uint64_t model_size, uint32_t shard_index, uint32_t shard_count) {
  // 128-bit products: d * i overflows 64 bits only past 2^58 coordinates, but costs nothing.
  const auto at = [&](uint32_t i) {
    return static_cast<uint64_t>(static_cast<unsigned __int128>(model_size) * i / shard_count);
  };
  return KeyRange{at(shard_index), at(shard_index + 1)};
}

}  // namespace ps
