#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "worker/models/model.h"
#include "worker/models/softmax_cross_entropy.h"

namespace ps {

double SoftmaxCrossEntropy(RowMatrix& logits, absl::Span<const int32_t> labels, bool to_gradient,
                           int64_t* correct) {
  double loss = 0.0;
  for (Eigen::Index i = 0; i < logits.rows(); ++i) {
    auto row = logits.row(i);
    Eigen::Index argmax;
    const float max = row.maxCoeff(&argmax);
    if (correct != nullptr && argmax == labels[i]) ++*correct;
    row.array() -= max;  // exp never overflows
    const double log_sum = std::log(static_cast<double>(row.array().exp().sum()));
    loss += log_sum - row(labels[i]);
    if (to_gradient) {
      row = (row.array() - static_cast<float>(log_sum)).exp().matrix();
      row(labels[i]) -= 1.0f;
    }
  }
  return loss;
}

namespace {

void FillNormal(uint64_t seed, float stddev, absl::Span<float> out) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  for (float& v : out) v = normal(rng);
}

// Multinomial logistic regression. Parameters: W (classes x dim, row-major), then b (classes).
class SoftmaxRegression : public Model {
 public:
  explicit SoftmaxRegression(const ModelSpec& spec) : spec_(spec) {}
  const ModelSpec& spec() const override { return spec_; }
  int64_t num_parameters() const override {
    return int64_t{spec_.num_classes} * spec_.input_dim + spec_.num_classes;
  }
  Layout layout() const override {
    const uint64_t classes = spec_.num_classes, dim = spec_.input_dim;
    return *Layout::Create({{"weights", {classes, dim}}, {"bias", {classes}}});
  }

  void Initialize(uint64_t seed, absl::Span<float> params) const override {
    FillNormal(seed, 0.01f, params.subspan(0, weights()));
    std::fill(params.begin() + weights(), params.end(), 0.0f);
  }

  double LossAndGradient(absl::Span<const float> params, const RowMatrix& x,
                         absl::Span<const int32_t> labels, absl::Span<float> grad) const override {
    const Eigen::Index n = x.rows();
    RowMatrix logits = Logits(params, x);
    const double data_loss = SoftmaxCrossEntropy(logits, labels, /*to_gradient=*/true, nullptr);
    logits /= static_cast<float>(n);
    RowMatrixRef grad_w(grad.data(), spec_.num_classes, spec_.input_dim);
    VectorRef grad_b(grad.data() + weights(), spec_.num_classes);
    grad_w.noalias() = logits.transpose() * x;
    grad_w += spec_.l2 * W(params);
    grad_b = logits.colwise().sum().transpose();
    return data_loss / n + 0.5 * spec_.l2 * W(params).squaredNorm();
  }

  double EvaluateBatch(absl::Span<const float> params, const RowMatrix& x,
                       absl::Span<const int32_t> labels, int64_t* correct) const override {
    RowMatrix logits = Logits(params, x);
    return SoftmaxCrossEntropy(logits, labels, /*to_gradient=*/false, correct);
  }

 private:
  int64_t weights() const { return int64_t{spec_.num_classes} * spec_.input_dim; }
  ConstRowMatrixRef W(absl::Span<const float> p) const {
    return ConstRowMatrixRef(p.data(), spec_.num_classes, spec_.input_dim);
  }
  RowMatrix Logits(absl::Span<const float> params, const RowMatrix& x) const {
    ConstVectorRef b(params.data() + weights(), spec_.num_classes);
    RowMatrix logits = x * W(params).transpose();
    logits.rowwise() += b.transpose();
    return logits;
  }

  ModelSpec spec_;
};

// L2-regularised binary logistic regression: labels 0 and 1. Parameters: w (dim), then b.
class LogisticRegression : public Model {
 public:
  explicit LogisticRegression(const ModelSpec& spec) : spec_(spec) {}
  const ModelSpec& spec() const override { return spec_; }
  int64_t num_parameters() const override { return spec_.input_dim + 1; }
  Layout layout() const override {
    return *Layout::Create({{"weights", {static_cast<uint64_t>(spec_.input_dim)}}, {"bias", {}}});
  }

  void Initialize(uint64_t seed, absl::Span<float> params) const override {
    FillNormal(seed, 0.01f, params.subspan(0, spec_.input_dim));
    params[spec_.input_dim] = 0.0f;
  }

  double LossAndGradient(absl::Span<const float> params, const RowMatrix& x,
                         absl::Span<const int32_t> labels, absl::Span<float> grad) const override {
    const Eigen::Index n = x.rows();
    const Eigen::VectorXf z = Margins(params, x);
    Eigen::VectorXf dz(n);
    double loss = 0.0;
    for (Eigen::Index i = 0; i < n; ++i) {
      loss += Softplus(z(i)) - labels[i] * z(i);
      dz(i) = (Sigmoid(z(i)) - labels[i]) / static_cast<float>(n);
    }
    ConstVectorRef w(params.data(), spec_.input_dim);
    VectorRef grad_w(grad.data(), spec_.input_dim);
    grad_w.noalias() = x.transpose() * dz;
    grad_w += spec_.l2 * w;
    grad[spec_.input_dim] = dz.sum();
    return loss / n + 0.5 * spec_.l2 * w.squaredNorm();
  }

  double EvaluateBatch(absl::Span<const float> params, const RowMatrix& x,
                       absl::Span<const int32_t> labels, int64_t* correct) const override {
    const Eigen::VectorXf z = Margins(params, x);
    double loss = 0.0;
    for (Eigen::Index i = 0; i < z.size(); ++i) {
      loss += Softplus(z(i)) - labels[i] * z(i);
      if ((z(i) > 0) == (labels[i] == 1)) ++*correct;
    }
    return loss;
  }

 private:
  static double Softplus(double z) {
    return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
  }
  static float Sigmoid(float z) {
    return z >= 0 ? 1.0f / (1.0f + std::exp(-z)) : std::exp(z) / (1.0f + std::exp(z));
  }
  Eigen::VectorXf Margins(absl::Span<const float> params, const RowMatrix& x) const {
    ConstVectorRef w(params.data(), spec_.input_dim);
    Eigen::VectorXf z = x * w;
    z.array() += params[spec_.input_dim];
    return z;
  }

  ModelSpec spec_;
};

// One hidden ReLU layer, softmax output. Parameters: W1 (hidden x dim), b1 (hidden),
// W2 (classes x hidden), b2 (classes), each row-major, in that order.
class Mlp : public Model {
 public:
  explicit Mlp(const ModelSpec& spec) : spec_(spec) {}
  const ModelSpec& spec() const override { return spec_; }
  int64_t num_parameters() const override { return OffsetB2() + spec_.num_classes; }
  Layout layout() const override {
    const uint64_t dim = spec_.input_dim, hidden = spec_.hidden_units, classes = spec_.num_classes;
    return *Layout::Create(
        {{"w1", {hidden, dim}}, {"b1", {hidden}}, {"w2", {classes, hidden}}, {"b2", {classes}}});
  }

  void Initialize(uint64_t seed, absl::Span<float> params) const override {
    // He initialisation for the ReLU layer, Xavier-like for the output; biases start at zero.
    std::fill(params.begin(), params.end(), 0.0f);
    FillNormal(seed, std::sqrt(2.0f / spec_.input_dim), params.subspan(0, OffsetB1()));
    FillNormal(seed + 1, std::sqrt(1.0f / spec_.hidden_units),
               params.subspan(OffsetW2(), OffsetB2() - OffsetW2()));
  }

  double LossAndGradient(absl::Span<const float> params, const RowMatrix& x,
                         absl::Span<const int32_t> labels, absl::Span<float> grad) const override {
    const Eigen::Index n = x.rows();
    RowMatrix pre, hidden;
    RowMatrix logits = Forward(params, x, &pre, &hidden);
    const double data_loss = SoftmaxCrossEntropy(logits, labels, /*to_gradient=*/true, nullptr);
    logits /= static_cast<float>(n);  // now d(mean loss)/d(logits)

    RowMatrixRef g_w1(grad.data(), spec_.hidden_units, spec_.input_dim);
    VectorRef g_b1(grad.data() + OffsetB1(), spec_.hidden_units);
    RowMatrixRef g_w2(grad.data() + OffsetW2(), spec_.num_classes, spec_.hidden_units);
    VectorRef g_b2(grad.data() + OffsetB2(), spec_.num_classes);

    g_w2.noalias() = logits.transpose() * hidden;
    g_w2 += spec_.l2 * W2(params);
    g_b2 = logits.colwise().sum().transpose();
    RowMatrix d_hidden = logits * W2(params);
    d_hidden.array() *= (pre.array() > 0.0f).cast<float>();
    g_w1.noalias() = d_hidden.transpose() * x;
    g_w1 += spec_.l2 * W1(params);
    g_b1 = d_hidden.colwise().sum().transpose();
    return data_loss / n + 0.5 * spec_.l2 * (W1(params).squaredNorm() + W2(params).squaredNorm());
  }

  double EvaluateBatch(absl::Span<const float> params, const RowMatrix& x,
                       absl::Span<const int32_t> labels, int64_t* correct) const override {
    RowMatrix pre, hidden;
    RowMatrix logits = Forward(params, x, &pre, &hidden);
    return SoftmaxCrossEntropy(logits, labels, /*to_gradient=*/false, correct);
  }

 private:
  int64_t OffsetB1() const { return int64_t{spec_.hidden_units} * spec_.input_dim; }
  int64_t OffsetW2() const { return OffsetB1() + spec_.hidden_units; }
  int64_t OffsetB2() const { return OffsetW2() + int64_t{spec_.num_classes} * spec_.hidden_units; }
  ConstRowMatrixRef W1(absl::Span<const float> p) const {
    return ConstRowMatrixRef(p.data(), spec_.hidden_units, spec_.input_dim);
  }
  ConstRowMatrixRef W2(absl::Span<const float> p) const {
    return ConstRowMatrixRef(p.data() + OffsetW2(), spec_.num_classes, spec_.hidden_units);
  }

  RowMatrix Forward(absl::Span<const float> params, const RowMatrix& x, RowMatrix* pre,
                    RowMatrix* hidden) const {
    ConstVectorRef b1(params.data() + OffsetB1(), spec_.hidden_units);
    ConstVectorRef b2(params.data() + OffsetB2(), spec_.num_classes);
    *pre = x * W1(params).transpose();
    pre->rowwise() += b1.transpose();
    *hidden = pre->cwiseMax(0.0f);
    RowMatrix logits = *hidden * W2(params).transpose();
    logits.rowwise() += b2.transpose();
    return logits;
  }

  ModelSpec spec_;
};

}  // namespace

ModelSpec ModelSpecFromConfig(const v1::TrainingConfig& config) {
  ModelSpec spec;
  spec.type = config.model();
  spec.input_dim = static_cast<int>(config.input_dim());
  spec.num_classes = static_cast<int>(config.num_classes());
  spec.hidden_units = static_cast<int>(config.hidden_units());
  spec.l2 = config.l2();
  return spec;
}

absl::StatusOr<std::unique_ptr<Model>> CreateModel(const ModelSpec& spec) {
  if (spec.input_dim <= 0 || spec.num_classes <= 1) {
    return absl::InvalidArgumentError(absl::StrCat("model needs input_dim > 0 and num_classes > 1",
                                                   "; got input_dim=", spec.input_dim,
                                                   " num_classes=", spec.num_classes));
  }
  if (!(spec.l2 >= 0.0f)) return absl::InvalidArgumentError("l2 must be >= 0");
  if (spec.type == "softmax") return std::make_unique<SoftmaxRegression>(spec);
  if (spec.type == "logistic") {
    if (spec.num_classes != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model 'logistic' is binary: num_classes must be 2, got ", spec.num_classes));
    }
    return std::make_unique<LogisticRegression>(spec);
  }
  if (spec.type == "mlp") {
    if (spec.hidden_units <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("model 'mlp' needs hidden_units > 0, got ", spec.hidden_units));
    }
    return std::make_unique<Mlp>(spec);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model '", spec.type, "'; choose softmax, logistic or mlp"));
}

absl::StatusOr<ModelValues> BuiltinInitialModel(const v1::TrainingConfig& config) {
  absl::StatusOr<std::unique_ptr<Model>> model = CreateModel(ModelSpecFromConfig(config));
  if (!model.ok()) return model.status();
  ModelValues out;
  out.layout = (*model)->layout();
  out.values.resize((*model)->num_parameters());
  (*model)->Initialize(config.model_seed(), absl::MakeSpan(out.values));
  return out;
}

}  // namespace ps
