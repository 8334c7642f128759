#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/models/model.h"

namespace ps {
namespace {

struct Problem {
  RowMatrix x;
  std::vector<int32_t> labels;
};

Problem RandomProblem(int n, int dim, int classes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p{RowMatrix(n, dim), std::vector<int32_t>(n)};
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < dim; ++j) p.x(i, j) = normal(rng);
    p.labels[i] = static_cast<int32_t>(rng() % classes);
  }
  return p;
}

// Checks every coordinate of the analytic gradient against a central finite difference of the
// loss, computed with parameters in double precision steps.
void ExpectGradientMatchesFiniteDifferences(const ModelSpec& spec) {
  auto model = CreateModel(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  const Problem p = RandomProblem(7, spec.input_dim, spec.num_classes, 3);
  std::vector<float> params((*model)->num_parameters());
  (*model)->Initialize(11, absl::MakeSpan(params));
  // Move away from zero biases so that no ReLU sits exactly on its kink.
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  for (float& v : params) v += normal(rng);

  std::vector<float> grad(params.size());
  (*model)->LossAndGradient(params, p.x, p.labels, absl::MakeSpan(grad));

  const float eps = 1e-2f;
  std::vector<float> unused(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<float> plus = params, minus = params;
    plus[i] += eps;
    minus[i] -= eps;
    const double f_plus = (*model)->LossAndGradient(plus, p.x, p.labels, absl::MakeSpan(unused));
    const double f_minus = (*model)->LossAndGradient(minus, p.x, p.labels, absl::MakeSpan(unused));
    const double numeric = (f_plus - f_minus) / (static_cast<double>(plus[i]) - minus[i]);
    // Float forward passes: the tolerance covers rounding of the loss divided by 2*eps plus the
    // O(eps^2) truncation error of the central difference.
    EXPECT_NEAR(grad[i], numeric, 2e-3 + 1e-2 * std::abs(numeric))
        << spec.type << " coordinate " << i;
  }
}

TEST(ModelGradients, SoftmaxMatchesFiniteDifferences) {
  ExpectGradientMatchesFiniteDifferences({"softmax", 5, 3, 0, 0.1f});
}

TEST(ModelGradients, LogisticMatchesFiniteDifferences) {
  ExpectGradientMatchesFiniteDifferences({"logistic", 6, 2, 0, 0.1f});
}

TEST(ModelGradients, MlpMatchesFiniteDifferences) {
  ExpectGradientMatchesFiniteDifferences({"mlp", 5, 3, 4, 0.1f});
}

TEST(SoftmaxRegression, LossOfTheZeroModelIsLogOfTheClassCount) {
  auto model = CreateModel({"softmax", 4, 10, 0, 0.0f});
  ASSERT_TRUE(model.ok());
  const Problem p = RandomProblem(5, 4, 10, 1);
  std::vector<float> params((*model)->num_parameters(), 0.0f), grad(params.size());
  EXPECT_NEAR((*model)->LossAndGradient(params, p.x, p.labels, absl::MakeSpan(grad)),
              std::log(10.0), 1e-6);
}

TEST(LogisticRegression, EvaluateCountsCorrectSigns) {
  auto model = CreateModel({"logistic", 1, 2, 0, 0.0f});
  ASSERT_TRUE(model.ok());
  RowMatrix x(3, 1);
  x << 2.0f, -1.0f, 3.0f;
  const std::vector<float> params = {1.0f, 0.0f};  // predicts 1 for x > 0
  const std::vector<int32_t> labels = {1, 0, 0};
  int64_t correct = 0;
  const double loss = (*model)->EvaluateBatch(params, x, labels, &correct);
  EXPECT_EQ(correct, 2);
  const double expected =
      std::log1p(std::exp(-2.0)) + std::log1p(std::exp(-1.0)) + std::log1p(std::exp(3.0));
  EXPECT_NEAR(loss, expected, 1e-5);
}

TEST(CreateModel, RefusesUnknownTypesAndBadShapes) {
  EXPECT_EQ(CreateModel({"resnet", 4, 10, 0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateModel({"logistic", 4, 10, 0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateModel({"mlp", 4, 10, 0, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateModel({"softmax", 0, 10, 0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BuiltinModels, LayoutsNameEveryParameterInOrder) {
  v1::TrainingConfig config;
  config.set_input_dim(6);
  config.set_num_classes(3);
  config.set_hidden_units(4);
  config.set_model_seed(9);
  for (const char* type : {"softmax", "mlp"}) {
    config.set_model(type);
    absl::StatusOr<ModelValues> initial = BuiltinInitialModel(config);
    ASSERT_TRUE(initial.ok()) << initial.status();
    auto model = CreateModel(ModelSpecFromConfig(config));
    EXPECT_EQ(initial->layout.size(), static_cast<uint64_t>((*model)->num_parameters())) << type;
    EXPECT_EQ(initial->values.size(), initial->layout.size());
    std::vector<float> again(initial->values.size());
    (*model)->Initialize(9, absl::MakeSpan(again));
    EXPECT_EQ(again, initial->values) << "initial values come from config.model_seed";
  }
  config.set_model("mlp");
  EXPECT_EQ(BuiltinInitialModel(config)->layout.tensors()[2].ToString(), "w2 [3, 4]");
  config.set_model("logistic");
  config.set_num_classes(2);
  EXPECT_EQ(BuiltinInitialModel(config)->layout.size(), 7u);
}

}  // namespace
}  // namespace ps
