// Splitting payloads into chunks and putting them back together.
#ifndef PS_COMMON_CHUNKING_H_
#define PS_COMMON_CHUNKING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ps {

// About 1 MiB of payload per message keeps every message far below gRPC's 4 MiB default limit.
inline constexpr uint64_t kDefaultChunkBytes = 1 << 20;
// The receive limit both sides set: one chunk plus room for the header.
inline constexpr int kMaxMessageBytes = (1 << 20) + (64 << 10);

struct ByteRange {
  uint64_t offset;
  uint64_t size;
};

// Splits [0, total_bytes) into consecutive ranges of at most chunk_bytes. Returns one empty range
// when total_bytes is 0, so that a header always has a message to travel in.
std::vector<ByteRange> ChunkRanges(uint64_t total_bytes, uint64_t chunk_bytes);

// Puts a payload back together from chunks that arrive in offset order, with no gap, overlap or
// byte past the announced end. Not thread-safe.
class PayloadAssembler {
 public:
  PayloadAssembler() = default;
  // `buffer` is reused as the payload's storage: passing a buffer from an earlier payload of the
  // same size avoids a fresh large allocation (and its page faults) per message.
  PayloadAssembler(uint64_t expected_bytes, uint64_t max_chunk_bytes, std::string buffer = {});

  // Starts over for a new payload, keeping the buffer's capacity.
  void Reset(uint64_t expected_bytes, uint64_t max_chunk_bytes);

  // INVALID_ARGUMENT for a chunk out of place (gap, overlap, past the end), too large, or empty
  // (only the first chunk may be empty: it can travel with just a header). The assembler is
  // unchanged then. Empty chunks would otherwise let a client hold a call open forever.
  // RESOURCE_EXHAUSTED past max_chunks(): tiny chunks cost the server a message each.
  absl::Status Add(uint64_t offset, absl::string_view data);
  // INVALID_ARGUMENT unless every byte arrived.
  absl::Status CheckComplete() const;

  uint64_t received_bytes() const { return payload_.size(); }
  // 16 times the chunks of full size the payload needs, plus 16.
  uint64_t max_chunks() const;
  const std::string& payload() const { return payload_; }
  // Hands the buffer back for reuse; the assembler is empty afterwards.
  std::string TakeBuffer() { return std::move(payload_); }

 private:
  uint64_t expected_bytes_ = 0;
  uint64_t max_chunk_bytes_ = 0;
  uint64_t chunks_ = 0;
  std::string payload_;
};

}  // namespace ps

#endif  // PS_COMMON_CHUNKING_H_
