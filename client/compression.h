// How a worker compresses its updates: a bit-width policy (fixed, or DQ-SGD's dynamic choice) and
// error feedback. Knows nothing of gRPC.
#ifndef PS_CLIENT_COMPRESSION_H_
#define PS_CLIENT_COMPRESSION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/dq_sgd.h"
#include "ps/v1/ps.pb.h"

namespace ps {

// What a worker may choose for itself, within the encodings the server allows.
struct CompressionOverrides {
  std::string update_encoding;  // "" = the server's
  uint32_t bits = 0;            // 0 = the server's
  std::string bits_policy;      // "" = the server's; "fixed" or "dqsgd"
};

// Applies `overrides` to the server's `config`; INVALID_ARGUMENT when the server does not allow it.
absl::Status ApplyOverrides(const CompressionOverrides& overrides, v1::TrainingConfig* config);

// The seed of shard `shard`'s compressor in worker `rank` (QSGD's stochastic rounding):
// different per worker and shard, reproducible per run.
inline uint64_t CompressorSeed(uint64_t data_seed, uint32_t rank, size_t shard) {
  return data_seed * 1000003 + rank + 17 + 1000 * shard;
}

// Encodes a worker's updates. Not thread-safe; one per worker.
class UpdateCompressor {
 public:
  // `config` gives the encoding, the policy and whether error feedback is on; `size` the length
  // of every update.
  UpdateCompressor(const v1::TrainingConfig& config, size_t size, uint64_t seed);

  // Encodes `update` as message `n` of `total` into *params and *payload. With error feedback it
  // encodes update + residual and keeps what the encoding dropped as the new residual.
  absl::Status Compress(absl::Span<const float> update, uint64_t n, uint64_t total,
                        v1::EncodingParams* params, std::string* payload);
  // Forgets the residual (after a refusal, a re-join or a re-sync).
  void ResetResidual();

  absl::Span<const float> residual() const { return residual_; }
  uint32_t last_bits() const { return last_bits_; }

 private:
  v1::EncodingParams base_;
  v1::BitsPolicy policy_;
  DqSgdBitChooser dq_;
  bool error_feedback_;
  uint64_t seed_;
  std::vector<float> residual_;
  std::vector<float> corrected_;  // update + residual
  std::vector<float> decoded_;
  uint32_t last_bits_ = 32;
};

}  // namespace ps

#endif  // PS_CLIENT_COMPRESSION_H_
