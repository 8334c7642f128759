#include "common/chunking.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace ps {

std::vector<ByteRange> ChunkRanges(uint64_t total_bytes, uint64_t chunk_bytes) {
  std::vector<ByteRange> ranges;
  if (chunk_bytes == 0) chunk_bytes = kDefaultChunkBytes;
  if (total_bytes == 0) return {{0, 0}};
  for (uint64_t offset = 0; offset < total_bytes; offset += chunk_bytes) {
    ranges.push_back({offset, std::min(chunk_bytes, total_bytes - offset)});
  }
  return ranges;
}

PayloadAssembler::PayloadAssembler(uint64_t expected_bytes, uint64_t max_chunk_bytes,
                                   std::string buffer)
    : payload_(std::move(buffer)) {
  Reset(expected_bytes, max_chunk_bytes);
}

void PayloadAssembler::Reset(uint64_t expected_bytes, uint64_t max_chunk_bytes) {
  expected_bytes_ = expected_bytes;
  max_chunk_bytes_ = max_chunk_bytes;
  chunks_ = 0;
  payload_.clear();
  payload_.reserve(expected_bytes);
}

absl::Status PayloadAssembler::Add(uint64_t offset, absl::string_view data) {
  if (data.size() > max_chunk_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk at offset %d has %d bytes, more than the limit of %d", offset,
                        data.size(), max_chunk_bytes_));
  }
  if (chunks_ >= max_chunks()) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("more than %d chunks for a %d-byte payload; send chunks of up to %d bytes",
                        max_chunks(), expected_bytes_, max_chunk_bytes_));
  }
  if (data.empty() && chunks_ > 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("empty chunk at offset %d: only the first chunk may be empty", offset));
  }
  if (offset < payload_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk at offset %d overlaps bytes already received (next expected offset %d)", offset,
        payload_.size()));
  }
  if (offset > payload_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk at offset %d leaves a gap: bytes [%d, %d) are missing", offset,
                        payload_.size(), offset));
  }
  if (data.size() > expected_bytes_ - payload_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk [%d, %d) runs past the end of the %d-byte payload", offset,
                        offset + data.size(), expected_bytes_));
  }
  payload_.append(data.data(), data.size());
  ++chunks_;
  return absl::OkStatus();
}

uint64_t PayloadAssembler::max_chunks() const {
  const uint64_t full =
      max_chunk_bytes_ == 0 ? 0 : (expected_bytes_ + max_chunk_bytes_ - 1) / max_chunk_bytes_;
  return 16 * full + 16;
}

absl::Status PayloadAssembler::CheckComplete() const {
  if (payload_.size() != expected_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream ended after %d of %d payload bytes: chunks [%d, %d) are missing",
                        payload_.size(), expected_bytes_, payload_.size(), expected_bytes_));
  }
  return absl::OkStatus();
}

}  // namespace ps
