#include "server/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "google/protobuf/unknown_field_set.h"

namespace ps {
namespace {

// The float arrays are written and read as raw memory: that is the little-endian IEEE-754 layout
// the file format promises only on a little-endian machine with IEEE floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "checkpoint files store floats as raw little-endian memory");
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4,
              "checkpoint files store IEEE-754 binary32 floats");

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'P', 'S', 'C', 'K', 'P', 'T', '\r', '\n'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kPrefixBytes = 16;  // magic, format version, header length
constexpr uint64_t kCrcBytes = 4;
// write(2) and read(2) move at most ~2 GiB per call; zlib's crc32() takes a 32-bit length.
constexpr size_t kChunkBytes = size_t{4} << 20;

constexpr absl::string_view kFilePrefix = "ckpt-";
constexpr absl::string_view kFileSuffix = ".ckpt";
constexpr size_t kVersionDigits = 20;
constexpr absl::string_view kTmpPrefix = ".ckpt-";
constexpr absl::string_view kTmpSuffix = ".tmp";

std::string ErrnoText(int err) { return std::generic_category().message(err); }

// Closes the descriptor unless Release()d; the write path closes explicitly to see close errors.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void PutU32(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const char* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return v;
}

uint32_t UpdateCrc(uint32_t crc, const char* data, size_t size) {
  while (size > 0) {
    const size_t n = std::min(size, kChunkBytes);
    crc = static_cast<uint32_t>(::crc32(crc, reinterpret_cast<const Bytef*>(data), n));
    data += n;
    size -= n;
  }
  return crc;
}

// Writes all of `data`, retrying on EINTR and short writes, and folds it into `*crc`.
absl::Status WriteAll(int fd, const std::string& path, const char* data, size_t size,
                      uint32_t* crc) {
  while (size > 0) {
    const size_t chunk = std::min(size, kChunkBytes);
    *crc = UpdateCrc(*crc, data, chunk);
    size_t done = 0;
    while (done < chunk) {
      const ssize_t n = ::write(fd, data + done, chunk - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::InternalError(absl::StrCat(path, ": write failed: ", ErrnoText(errno)));
      }
      done += static_cast<size_t>(n);
    }
    data += chunk;
    size -= chunk;
  }
  return absl::OkStatus();
}

// Writes the whole file at `path` (created or truncated) and fsyncs it; the caller cleans up.
absl::Status WriteFile(const std::string& path, const std::string& header,
                       const CheckpointView& checkpoint) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return absl::InternalError(absl::StrCat(path, ": cannot create: ", ErrnoText(errno)));
  }
  std::string prefix(kPrefixBytes, '\0');
  std::memcpy(prefix.data(), kMagic, sizeof(kMagic));
  PutU32(kFormatVersion, prefix.data() + 8);
  PutU32(static_cast<uint32_t>(header.size()), prefix.data() + 12);

  uint32_t crc = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
  PS_RETURN_IF_ERROR(WriteAll(fd.get(), path, prefix.data(), prefix.size(), &crc));
  PS_RETURN_IF_ERROR(WriteAll(fd.get(), path, header.data(), header.size(), &crc));
  PS_RETURN_IF_ERROR(WriteAll(fd.get(), path,
                              reinterpret_cast<const char*>(checkpoint.model.data()),
                              checkpoint.model.size() * sizeof(float), &crc));
  PS_RETURN_IF_ERROR(WriteAll(fd.get(), path,
                              reinterpret_cast<const char*>(checkpoint.broadcast.data()),
                              checkpoint.broadcast.size() * sizeof(float), &crc));
  for (absl::Span<const float> buffer : checkpoint.outer) {
    PS_RETURN_IF_ERROR(WriteAll(fd.get(), path, reinterpret_cast<const char*>(buffer.data()),
                                buffer.size() * sizeof(float), &crc));
  }
  char trailer[kCrcBytes];
  PutU32(crc, trailer);
  uint32_t unused = 0;
  PS_RETURN_IF_ERROR(WriteAll(fd.get(), path, trailer, sizeof(trailer), &unused));

  if (::fsync(fd.get()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": fsync failed: ", ErrnoText(errno)));
  }
  // close() can report a deferred write error (e.g. on NFS), so it is checked, not left to ~Fd.
  if (::close(fd.Release()) != 0) {
    return absl::InternalError(absl::StrCat(path, ": close failed: ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

// Makes the rename durable: without it a crash can lose the directory entry.
absl::Status SyncDirectory(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::InternalError(
        absl::StrCat(dir, ": cannot open directory to fsync it: ", ErrnoText(errno)));
  }
  if (::fsync(fd.get()) != 0) {
    return absl::InternalError(absl::StrCat(dir, ": directory fsync failed: ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

// `ckpt-` + exactly 20 digits + `.ckpt`, and the number fits in 64 bits.
std::optional<uint64_t> ParseCheckpointName(absl::string_view name) {
  if (name.size() != kFilePrefix.size() + kVersionDigits + kFileSuffix.size() ||
      !absl::StartsWith(name, kFilePrefix) || !absl::EndsWith(name, kFileSuffix)) {
    return std::nullopt;
  }
  const absl::string_view digits = name.substr(kFilePrefix.size(), kVersionDigits);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  uint64_t version = 0;
  if (!absl::SimpleAtoi(digits, &version)) return std::nullopt;  // above 2^64 - 1
  return version;
}

bool IsTmpName(absl::string_view name) {
  return name.size() > kTmpPrefix.size() + kTmpSuffix.size() &&
         absl::StartsWith(name, kTmpPrefix) && absl::EndsWith(name, kTmpSuffix);
}

// Calls `visit` with the name of every entry of `dir`. NOT_FOUND if `dir` does not exist.
absl::Status ForEachEntry(const std::string& dir,
                          const std::function<void(const std::string&)>& visit) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) {
      return absl::NotFoundError(absl::StrCat(dir, ": no such directory"));
    }
    return absl::InternalError(
        absl::StrCat(dir, ": cannot list the checkpoint directory: ", ec.message()));
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    visit(it->path().filename().string());
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat(dir, ": cannot list the checkpoint directory: ", ec.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> ListVersions(const std::string& dir) {
  std::vector<uint64_t> versions;
  PS_RETURN_IF_ERROR(ForEachEntry(dir, [&](const std::string& name) {
    if (std::optional<uint64_t> v = ParseCheckpointName(name)) versions.push_back(*v);
  }));
  std::sort(versions.begin(), versions.end(), std::greater<uint64_t>());
  return versions;
}

// Deletes all but the newest `keep` checkpoints (never `written`) and every temporary file. Only
// logs failures: the new checkpoint is already durable, so the write itself succeeded.
void Prune(const std::string& dir, int keep, uint64_t written) {
  std::vector<uint64_t> versions;
  std::vector<std::string> doomed;
  const absl::Status listed = ForEachEntry(dir, [&](const std::string& name) {
    if (std::optional<uint64_t> v = ParseCheckpointName(name)) {
      versions.push_back(*v);
    } else if (IsTmpName(name)) {
      doomed.push_back((fs::path(dir) / name).string());
    }
  });
  if (!listed.ok()) {
    LogWarning(absl::StrFormat("event=checkpoint_prune_failed dir=%s error=\"%s\"", dir,
                               listed.message()));
    return;
  }
  std::sort(versions.begin(), versions.end(), std::greater<uint64_t>());
  for (size_t i = static_cast<size_t>(keep); i < versions.size(); ++i) {
    if (versions[i] != written) doomed.push_back(CheckpointPath(dir, versions[i]));
  }
  for (const std::string& path : doomed) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      LogWarning(absl::StrFormat("event=checkpoint_prune_failed path=%s error=\"%s\"", path,
                                 ErrnoText(errno)));
    }
  }
}

absl::Status DataLoss(const std::string& path, absl::string_view problem) {
  return absl::DataLossError(absl::StrCat(path, ": ", problem));
}

// Reads exactly `size` bytes into `out` (when non-null) and folds them into the running CRC.
// With a null `out` the bytes are only checksummed, through a bounded buffer.
class CrcReader {
 public:
  CrcReader(int fd, const std::string& path)
      : fd_(fd), path_(path), crc_(static_cast<uint32_t>(::crc32(0L, Z_NULL, 0))) {}

  absl::Status Read(char* out, uint64_t size, bool checksum = true) {
    std::string scratch;
    while (size > 0) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(size, kChunkBytes));
      char* dst = out;
      if (dst == nullptr) {
        scratch.resize(want);
        dst = scratch.data();
      }
      size_t done = 0;
      while (done < want) {
        const ssize_t n = ::read(fd_, dst + done, want - done);
        if (n < 0) {
          if (errno == EINTR) continue;
          return DataLoss(path_,
                          absl::StrCat("read failed at offset ", offset_, ": ", ErrnoText(errno)));
        }
        if (n == 0) {
          return DataLoss(
              path_, absl::StrCat("truncated: unexpected end of file at offset ", offset_ + done));
        }
        done += static_cast<size_t>(n);
      }
      if (checksum) crc_ = UpdateCrc(crc_, dst, want);
      offset_ += want;
      size -= want;
      if (out != nullptr) out += want;
    }
    return absl::OkStatus();
  }

  uint32_t crc() const { return crc_; }

 private:
  int fd_;
  const std::string& path_;
  uint32_t crc_;
  uint64_t offset_ = 0;
};

absl::uint128 DescribedPayload(uint64_t n, bool broadcast, uint64_t outer_buffers) {
  return absl::uint128(n) * sizeof(float) * ((broadcast ? 2 : 1) + absl::uint128(outer_buffers));
}

struct Layout {
  uint64_t n = 0;  // values per model
  bool broadcast = false;
  uint64_t outer_buffers = 0;
};

// Where the payload goes, taken from the header before the CRC vouches for it: only the three
// fields that fix the sizes, read schema-free, since the generated parser logs about the invalid
// UTF-8 a corrupt file may hold. nullopt unless the sizes they describe agree with the file.
std::optional<Layout> TentativeLayout(const std::string& header_bytes, uint64_t payload_size) {
  google::protobuf::UnknownFieldSet fields;
  if (header_bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !fields.ParseFromString(header_bytes)) {
    return std::nullopt;
  }
  // Same rules as the generated parser: the last occurrence wins, other wire types are unknown.
  uint64_t begin = 0;
  uint64_t end = 0;
  Layout layout;
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& field = fields.field(i);
    if (field.type() != google::protobuf::UnknownField::TYPE_VARINT) continue;
    switch (field.number()) {
      case v1::CheckpointHeader::kShardBeginFieldNumber:
        begin = field.varint();
        break;
      case v1::CheckpointHeader::kShardEndFieldNumber:
        end = field.varint();
        break;
      case v1::CheckpointHeader::kHasBroadcastFieldNumber:
        layout.broadcast = field.varint() != 0;
        break;
      case v1::CheckpointHeader::kOuterBuffersFieldNumber:
        layout.outer_buffers = static_cast<uint32_t>(field.varint());
        break;
      default:
        break;
    }
  }
  if (end < begin) return std::nullopt;
  layout.n = end - begin;
  if (DescribedPayload(layout.n, layout.broadcast, layout.outer_buffers) != payload_size) {
    return std::nullopt;
  }
  return layout;
}

// The index of the first NaN or infinity in `values`, if any.
std::optional<size_t> FirstNonFinite(absl::Span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return std::nullopt;
}

absl::Status CheckFinite(const std::string& path, const std::vector<float>& values,
                         absl::string_view what) {
  if (std::optional<size_t> i = FirstNonFinite(values)) {
    return DataLoss(path, absl::StrCat(what, " value ", *i, " is not finite (", values[*i], ")"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointPath(const std::string& dir, uint64_t version) {
  return (fs::path(dir) / absl::StrFormat("ckpt-%020d.ckpt", version)).string();
}

absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& checkpoint, int keep) {
  CheckpointView view{checkpoint.header, checkpoint.model, checkpoint.broadcast, {}};
  for (const std::vector<float>& buffer : checkpoint.outer) view.outer.push_back(buffer);
  return WriteCheckpoint(dir, view, keep);
}

absl::Status WriteCheckpoint(const std::string& dir, const CheckpointView& checkpoint, int keep) {
  const v1::CheckpointHeader& header = checkpoint.header;
  if (dir.empty()) return absl::InvalidArgumentError("checkpoint directory is empty");
  if (keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep must be at least 1 (it would delete the new checkpoint), got ", keep));
  }
  if (header.shard_end() < header.shard_begin()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint header has shard_end ",
                                                   header.shard_end(), " before shard_begin ",
                                                   header.shard_begin()));
  }
  const uint64_t n = header.shard_end() - header.shard_begin();
  if (checkpoint.model.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint model has ", checkpoint.model.size(), " values, the header's shard [",
        header.shard_begin(), ", ", header.shard_end(), ") has ", n));
  }
  const uint64_t broadcast_size = header.has_broadcast() ? n : 0;
  if (checkpoint.broadcast.size() != broadcast_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint broadcast model has ", checkpoint.broadcast.size(), " values, expected ",
        broadcast_size, header.has_broadcast() ? "" : " (header.has_broadcast is false)"));
  }
  if (checkpoint.outer.size() != header.outer_buffers()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint has ", checkpoint.outer.size(),
                                                   " outer-optimizer buffers, the header says ",
                                                   header.outer_buffers()));
  }
  for (absl::Span<const float> buffer : checkpoint.outer) {
    if (buffer.size() != n) {
      return absl::InvalidArgumentError("an outer-optimizer buffer is not of the model's size");
    }
  }
  // The reader rejects non-finite values, so such a file would only shadow an older good one.
  for (const auto& [values, what] :
       {std::pair{checkpoint.model, "model"}, std::pair{checkpoint.broadcast, "broadcast"}}) {
    if (std::optional<size_t> i = FirstNonFinite(values)) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint ", what, " value ", *i, " is not finite (", values[*i], ")"));
    }
  }
  std::string header_bytes;
  if (!header.SerializeToString(&header_bytes)) {
    return absl::InternalError("cannot serialize the checkpoint header");
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat(dir, ": cannot create the checkpoint directory: ", ec.message()));
  }
  const std::string tmp =
      (fs::path(dir) / absl::StrCat(".ckpt-", header.version(), ".tmp")).string();
  const std::string path = CheckpointPath(dir, header.version());
  if (absl::Status written = WriteFile(tmp, header_bytes, checkpoint); !written.ok()) {
    ::unlink(tmp.c_str());
    return written;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(tmp, ": cannot rename to ", path, ": ", ErrnoText(err)));
  }
  PS_RETURN_IF_ERROR(SyncDirectory(dir));
  Prune(dir, keep, header.version());
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return DataLoss(path, absl::StrCat("cannot open: ", ErrnoText(errno)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return DataLoss(path, ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) return DataLoss(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < kPrefixBytes + kCrcBytes) {
    return DataLoss(path, absl::StrCat("truncated: file has ", file_size, " bytes, fewer than the ",
                                       kPrefixBytes + kCrcBytes, " of the fixed fields"));
  }

  CrcReader reader(fd.get(), path);
  char prefix[kPrefixBytes];
  PS_RETURN_IF_ERROR(reader.Read(prefix, kPrefixBytes));
  if (std::memcmp(prefix, kMagic, sizeof(kMagic)) != 0) {
    return DataLoss(path, "bad magic: not a checkpoint file");
  }
  const uint32_t format_version = GetU32(prefix + 8);
  if (format_version != kFormatVersion) {
    return DataLoss(path, absl::StrCat("unsupported format version ", format_version, " (expected ",
                                       kFormatVersion, ")"));
  }
  const uint64_t header_size = GetU32(prefix + 12);
  if (header_size > file_size - kPrefixBytes - kCrcBytes) {
    return DataLoss(path, absl::StrCat("truncated: header length ", header_size,
                                       " exceeds file size ", file_size));
  }
  std::string header_bytes(header_size, '\0');
  PS_RETURN_IF_ERROR(reader.Read(header_bytes.data(), header_size));
  const uint64_t payload_size = file_size - kPrefixBytes - header_size - kCrcBytes;

  const std::optional<Layout> layout = TentativeLayout(header_bytes, payload_size);
  Checkpoint checkpoint;
  if (layout.has_value()) {
    checkpoint.model.resize(layout->n);
    PS_RETURN_IF_ERROR(
        reader.Read(reinterpret_cast<char*>(checkpoint.model.data()), layout->n * sizeof(float)));
    if (layout->broadcast) {
      checkpoint.broadcast.resize(layout->n);
      PS_RETURN_IF_ERROR(reader.Read(reinterpret_cast<char*>(checkpoint.broadcast.data()),
                                     layout->n * sizeof(float)));
    }
    checkpoint.outer.resize(layout->outer_buffers);
    for (std::vector<float>& buffer : checkpoint.outer) {
      buffer.resize(layout->n);
      PS_RETURN_IF_ERROR(
          reader.Read(reinterpret_cast<char*>(buffer.data()), layout->n * sizeof(float)));
    }
  } else {
    PS_RETURN_IF_ERROR(reader.Read(nullptr, payload_size));
  }
  char trailer[kCrcBytes];
  PS_RETURN_IF_ERROR(reader.Read(trailer, kCrcBytes, /*checksum=*/false));
  const uint32_t stored = GetU32(trailer);
  if (stored != reader.crc()) {
    return DataLoss(path, absl::StrFormat("checksum mismatch (stored 0x%08x, computed 0x%08x): "
                                          "the file is corrupt",
                                          stored, reader.crc()));
  }

  v1::CheckpointHeader& header = checkpoint.header;
  if (!header.ParseFromString(header_bytes)) return DataLoss(path, "header does not parse");
  if (header.shard_end() < header.shard_begin()) {
    return DataLoss(path, absl::StrCat("header has shard_end ", header.shard_end(),
                                       " before shard_begin ", header.shard_begin()));
  }
  const uint64_t n = header.shard_end() - header.shard_begin();
  const absl::uint128 described =
      DescribedPayload(n, header.has_broadcast(), header.outer_buffers());
  if (described != payload_size) {
    return DataLoss(
        path, absl::StrFormat("size mismatch: file has %d bytes, header describes %d", file_size,
                              described + kPrefixBytes + header_size + kCrcBytes));
  }
  // Unreachable unless the two parsers disagree; then the payload may have been split wrongly.
  if (!layout.has_value() || layout->n != n || layout->broadcast != header.has_broadcast() ||
      layout->outer_buffers != header.outer_buffers()) {
    return DataLoss(path, "header fields are ambiguous");
  }
  PS_RETURN_IF_ERROR(CheckFinite(path, checkpoint.model, "model"));
  PS_RETURN_IF_ERROR(CheckFinite(path, checkpoint.broadcast, "broadcast"));
  for (const std::vector<float>& buffer : checkpoint.outer) {
    PS_RETURN_IF_ERROR(CheckFinite(path, buffer, "outer-optimizer buffer"));
  }
  return checkpoint;
}

absl::StatusOr<std::optional<LoadedCheckpoint>> LoadNewestCheckpoint(const std::string& dir) {
  absl::StatusOr<std::vector<uint64_t>> versions = ListVersions(dir);
  if (absl::IsNotFound(versions.status())) return std::nullopt;
  PS_RETURN_IF_ERROR(versions.status());
  if (versions->empty()) return std::nullopt;

  LoadedCheckpoint loaded;
  for (uint64_t version : *versions) {
    const std::string path = CheckpointPath(dir, version);
    absl::StatusOr<Checkpoint> checkpoint = ReadCheckpoint(path);
    if (!checkpoint.ok()) {
      loaded.skipped.emplace_back(checkpoint.status().message());
      continue;
    }
    if (checkpoint->header.version() != version) {
      // A renamed or misplaced file: resuming from it would misreport the model version.
      loaded.skipped.push_back(absl::StrCat(path, ": header version ", checkpoint->header.version(),
                                            " does not match the file name (version ", version,
                                            ")"));
      continue;
    }
    loaded.path = path;
    loaded.checkpoint = *std::move(checkpoint);
    return std::optional<LoadedCheckpoint>(std::move(loaded));
  }
  return absl::DataLossError(absl::StrCat("no valid checkpoint in ", dir, " (",
                                          loaded.skipped.size(),
                                          " corrupt): ", absl::StrJoin(loaded.skipped, "; ")));
}

std::vector<uint64_t> ListCheckpointVersions(const std::string& dir) {
  absl::StatusOr<std::vector<uint64_t>> versions = ListVersions(dir);
  if (!versions.ok()) return {};
  return *std::move(versions);
}

}  // namespace ps
