// Loader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw (zlib reads both).
#include <zlib.h>

#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/data/dataset.h"

namespace ps {
namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

absl::StatusOr<GzFile> Open(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  return GzFile(f);
}

// Reads exactly `size` bytes at byte `offset` of the decompressed stream.
absl::Status ReadExactly(gzFile f, const std::string& path, uint64_t offset, void* out,
                         uint64_t size, absl::string_view what) {
  uint64_t done = 0;
  while (done < size) {
    const unsigned want = static_cast<unsigned>(std::min<uint64_t>(size - done, 1u << 30));
    const int got = gzread(f, static_cast<char*>(out) + done, want);
    if (got < 0) {
      int err = 0;
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: corrupt data at byte %d (%s): %s", path, offset + done, what, gzerror(f, &err)));
    }
    if (got == 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: truncated: needed %d bytes of %s at byte %d, the file ends at %d",
                          path, size, what, offset, offset + done));
    }
    done += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ReadBigEndian32(gzFile f, const std::string& path, uint64_t offset,
                                         absl::string_view what) {
  unsigned char b[4];
  if (absl::Status s = ReadExactly(f, path, offset, b, 4, what); !s.ok()) return s;
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

absl::Status ExpectMagic(gzFile f, const std::string& path, uint32_t expected,
                         absl::string_view kind) {
  auto magic = ReadBigEndian32(f, path, 0, "the magic number");
  if (!magic.ok()) return magic.status();
  if (*magic != expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: bad magic number 0x%08x at byte 0; an IDX %s file starts with 0x%08x",
                        path, *magic, kind, expected));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Dataset> LoadIdx(const std::string& images_path, const std::string& labels_path,
                                int64_t limit) {
  auto images = Open(images_path);
  if (!images.ok()) return images.status();
  auto labels = Open(labels_path);
  if (!labels.ok()) return labels.status();

  if (auto s = ExpectMagic(images->get(), images_path, 0x00000803, "image"); !s.ok()) return s;
  if (auto s = ExpectMagic(labels->get(), labels_path, 0x00000801, "label"); !s.ok()) return s;
  uint32_t dims[3];
  const char* names[3] = {"the image count", "the row count", "the column count"};
  for (int i = 0; i < 3; ++i) {
    auto v = ReadBigEndian32(images->get(), images_path, 4 + 4 * i, names[i]);
    if (!v.ok()) return v.status();
    dims[i] = *v;
  }
  auto label_count = ReadBigEndian32(labels->get(), labels_path, 4, "the label count");
  if (!label_count.ok()) return label_count.status();
  if (*label_count != dims[0]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has %d labels but %s has %d images", labels_path, *label_count, images_path, dims[0]));
  }
  if (dims[1] == 0 || dims[2] == 0 || uint64_t{dims[1]} * dims[2] > (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: implausible image size %dx%d in the header", images_path, dims[1], dims[2]));
  }
  int64_t n = dims[0];
  if (limit > 0 && limit < n) n = limit;
  const int64_t pixels = int64_t{dims[1]} * dims[2];

  std::vector<unsigned char> raw(static_cast<size_t>(n * pixels));
  if (auto s = ReadExactly(images->get(), images_path, 16, raw.data(), raw.size(), "pixels");
      !s.ok()) {
    return s;
  }
  std::vector<unsigned char> raw_labels(static_cast<size_t>(n));
  if (auto s = ReadExactly(labels->get(), labels_path, 8, raw_labels.data(), raw_labels.size(),
                           "labels");
      !s.ok()) {
    return s;
  }
  Dataset data;
  data.features.resize(n, pixels);
  data.labels.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < pixels; ++j) data.features(i, j) = raw[i * pixels + j] / 255.0f;
    data.labels[i] = raw_labels[i];
    data.num_classes = std::max<int>(data.num_classes, raw_labels[i] + 1);
  }
  return data;
}

absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train, int64_t limit) {
  const std::string prefix = absl::StrCat(dir, "/", train ? "train" : "t10k");
  auto pick = [](const std::string& base) {
    const std::string gz = base + ".gz";
    return std::ifstream(gz).good() ? gz : base;
  };
  return LoadIdx(pick(prefix + "-images-idx3-ubyte"), pick(prefix + "-labels-idx1-ubyte"), limit);
}

}  // namespace ps
