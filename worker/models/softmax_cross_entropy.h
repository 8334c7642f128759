// Shared by the softmax and MLP models: stable softmax cross-entropy over rows of logits.
#ifndef PS_WORKER_MODELS_SOFTMAX_CROSS_ENTROPY_H_
#define PS_WORKER_MODELS_SOFTMAX_CROSS_ENTROPY_H_

#include <cstdint>

#include "absl/types/span.h"
#include "common/eigen_types.h"

namespace ps {

// Returns the summed loss; replaces `logits` by d(loss)/d(logits) = softmax - onehot when
// `to_gradient`; counts correct argmax predictions into *correct when not null.
double SoftmaxCrossEntropy(RowMatrix& logits, absl::Span<const int32_t> labels, bool to_gradient,
                           int64_t* correct);

}  // namespace ps

#endif  // PS_WORKER_MODELS_SOFTMAX_CROSS_ENTROPY_H_
