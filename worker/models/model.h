// Models trained by the workers: a flat float32 parameter vector and hand-written gradients.
#ifndef PS_WORKER_MODELS_MODEL_H_
#define PS_WORKER_MODELS_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/eigen_types.h"
#include "common/layout.h"
#include "ps/v1/ps.pb.h"

namespace ps {

struct ModelSpec {
  std::string type = "softmax";  // "softmax", "logistic" or "mlp"
  int input_dim = 784;
  int num_classes = 10;
  int hidden_units = 128;  // mlp only
  float l2 = 0.0f;         // (l2 / 2) * ||weights||^2 is added to the loss; biases are not decayed
};

// Stateless after construction, so thread-safe. Parameters live in caller memory.
class Model {
 public:
  virtual ~Model() = default;

  virtual const ModelSpec& spec() const = 0;
  virtual int64_t num_parameters() const = 0;
  // The parameters as named tensors, in the order of the flat vector (what a Join carries).
  virtual Layout layout() const = 0;

  // Writes the initial parameters drawn from `seed`. REQUIRES: params.size() == num_parameters().
  virtual void Initialize(uint64_t seed, absl::Span<float> params) const = 0;

  // Mean loss over the batch plus the L2 term; overwrites `grad` with its gradient.
  // REQUIRES: x.cols() == input_dim, labels in [0, num_classes), sizes match.
  virtual double LossAndGradient(absl::Span<const float> params, const RowMatrix& x,
                                 absl::Span<const int32_t> labels,
                                 absl::Span<float> grad) const = 0;

  // Sum of the per-example loss (no L2 term) and the number of correct predictions.
  virtual double EvaluateBatch(absl::Span<const float> params, const RowMatrix& x,
                               absl::Span<const int32_t> labels, int64_t* correct) const = 0;
};

// The model that a server's TrainingConfig describes.
ModelSpec ModelSpecFromConfig(const v1::TrainingConfig& config);

// INVALID_ARGUMENT for an unknown type or non-positive sizes.
absl::StatusOr<std::unique_ptr<Model>> CreateModel(const ModelSpec& spec);

// The layout and initial values (from config.model_seed) of the model `config` describes.
absl::StatusOr<ModelValues> BuiltinInitialModel(const v1::TrainingConfig& config);

}  // namespace ps

#endif  // PS_WORKER_MODELS_MODEL_H_
