// Turns the chunk stream of one Push back into an update, checking everything the client sent
// before it is used: the header against the shard's rules before any payload is buffered, then
// every chunk's place and size. Knows nothing of gRPC, so the fuzzer drives it directly.
#ifndef PS_SERVER_PUSH_ASSEMBLY_H_
#define PS_SERVER_PUSH_ASSEMBLY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/chunking.h"
#include "ps/v1/ps.pb.h"

namespace ps {

// What a push to this shard must look like.
struct PushRules {
  uint64_t model_size = 0;
  uint64_t shard_begin = 0;
  uint64_t shard_end = 0;
  uint64_t max_chunk_bytes = kDefaultChunkBytes;
  std::vector<int> allowed_encodings;  // v1::Encoding values
  uint64_t shard_size() const { return shard_end - shard_begin; }
};

// INVALID_ARGUMENT naming the first problem: element count, encoding not allowed or malformed,
// payload size other than the encoding's exact size.
absl::Status CheckUpdateHeader(const PushRules& rules, const v1::UpdateHeader& header);

// Not thread-safe; one per Push call.
class PushAssembly {
 public:
  // Gives the rules a push with this header must follow, or refuses it (membership, identity,
  // concurrency); runs once, on the header, before any payload is buffered.
  using Admit = std::function<absl::StatusOr<PushRules>(const v1::UpdateHeader&)>;
  explicit PushAssembly(Admit admit);
  // Storage to reuse for the payload (a pooled buffer); before the first Add.
  void SetBuffer(std::string buffer) { buffer_ = std::move(buffer); }

  // Admits and checks the header of the first chunk (CheckUpdateHeader against the admitted
  // rules) without buffering anything: the caller may wait for memory before it calls Add.
  absl::Status AdmitHeader(const v1::UpdateChunk& first);
  // The first chunk must carry the header (admitted here unless AdmitHeader did) and no later
  // one may.
  absl::Status Add(const v1::UpdateChunk& chunk);
  // INVALID_ARGUMENT unless the header and every payload byte arrived.
  absl::Status Finish() const;

  bool has_header() const { return rules_.has_value(); }
  const v1::UpdateHeader& header() const { return header_; }
  absl::string_view payload() const;
  // The payload buffer, for reuse by a later push.
  std::string TakeBuffer();

 private:
  Admit admit_;
  std::string buffer_;
  v1::UpdateHeader header_;
  std::optional<PushRules> rules_;  // set once the header is admitted
  std::optional<PayloadAssembler> assembler_;
};

}  // namespace ps

#endif  // PS_SERVER_PUSH_ASSEMBLY_H_
