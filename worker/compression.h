// How a worker compresses its updates: a bit-width policy (fixed, or DQ-SGD's dynamic choice) and
// error feedback. Knows nothing of gRPC.
#ifndef PS_WORKER_COMPRESSION_H_
#define PS_WORKER_COMPRESSION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/dq_sgd.h"
#include "ps/v1/ps.pb.h"

namespace ps {

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

#endif  // PS_WORKER_COMPRESSION_H_
