#include "server/outer_optimizer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {
namespace {

size_t BuffersOf(OuterKind kind) {
  switch (kind) {
    case OuterKind::kAverage:
      return 0;
    case OuterKind::kSgd:
    case OuterKind::kSlowMo:
      return 1;
    case OuterKind::kFedAdam:
    case OuterKind::kDelayedNesterov:
      return 2;
  }
  return 0;
}

}  // namespace

OuterOptimizerOptions DefaultOuterOptions(absl::string_view name) {
  OuterOptimizerOptions o;
  o.kind = ParseOuterKind(name).value_or(OuterKind::kAverage);
  switch (o.kind) {
    case OuterKind::kAverage:
      break;
    case OuterKind::kSgd:
      o.lr = 0.7;
      o.momentum = 0.9;
      o.nesterov = name == "nesterov";
      break;
    case OuterKind::kSlowMo:
      o.lr = 1.0;
      o.momentum = 0.5;
      break;
    case OuterKind::kFedAdam:
      o.lr = 0.1;
      break;
    case OuterKind::kDelayedNesterov:
      o.lr = 1.0;
      o.momentum = 0.9;
      o.period = 0;  // the server's num_workers
      break;
  }
  return o;
}

absl::StatusOr<OuterKind> ParseOuterKind(absl::string_view name) {
  if (name == "average") return OuterKind::kAverage;
  if (name == "sgd" || name == "nesterov") return OuterKind::kSgd;
  if (name == "slowmo") return OuterKind::kSlowMo;
  if (name == "fedadam") return OuterKind::kFedAdam;
  if (name == "delayed_nesterov") return OuterKind::kDelayedNesterov;
  return absl::InvalidArgumentError(
      absl::StrCat("--outer_optimizer=", name,
                   " is not one of: average, sgd, nesterov, slowmo, fedadam, delayed_nesterov"));
}

std::string OuterKindName(OuterKind kind) {
  switch (kind) {
    case OuterKind::kAverage:
      return "average";
    case OuterKind::kSgd:
      return "sgd";
    case OuterKind::kSlowMo:
      return "slowmo";
    case OuterKind::kFedAdam:
      return "fedadam";
    case OuterKind::kDelayedNesterov:
      return "delayed_nesterov";
  }
  return "?";
}

absl::Status ValidateOuterOptions(const OuterOptimizerOptions& o, bool sync) {
  const bool async_rule = o.kind == OuterKind::kAverage || o.kind == OuterKind::kDelayedNesterov;
  if (!sync && !async_rule) {
    return absl::InvalidArgumentError(
        absl::StrCat("--outer_optimizer=", OuterKindName(o.kind),
                     " needs sync rounds; in async mode use average or delayed_nesterov"));
  }
  if (sync && o.kind == OuterKind::kDelayedNesterov) {
    return absl::InvalidArgumentError(
        "--outer_optimizer=delayed_nesterov is for async mode; in sync mode use nesterov");
  }
  if (!(o.lr > 0) || !std::isfinite(o.lr)) {
    return absl::InvalidArgumentError(absl::StrCat("--outer_lr = ", o.lr, ": must be > 0"));
  }
  if (!(o.momentum >= 0 && o.momentum < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--outer_momentum = ", o.momentum, ": must be in [0, 1)"));
  }
  if (o.kind == OuterKind::kFedAdam &&
      (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1) || !(o.tau > 0))) {
    return absl::InvalidArgumentError(
        "fedadam needs 0 <= --adam_beta1, --adam_beta2 < 1 and --adam_tau > 0");
  }
  if (o.period < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--outer_period = ", o.period, ": must be >= 1"));
  }
  return absl::OkStatus();
}

OuterOptimizer::OuterOptimizer(const OuterOptimizerOptions& options, size_t size)
    : options_(options), buffers_(BuffersOf(options.kind), std::vector<float>(size, 0.0f)) {}

float OuterOptimizer::ApplyRound(absl::Span<const float> model, absl::Span<float> average_then_next,
                                 double inner_lr) {
  const OuterOptimizerOptions& o = options_;
  const float lr = static_cast<float>(o.lr), mu = static_cast<float>(o.momentum);
  const bool first = steps_ == 0;
  float max_abs = 0.0f;
  // Coordinate i of the average is read before the next model's is written in its place.
  absl::Span<float> next = average_then_next;
  auto put = [&](size_t i, float x) {
    next[i] = x;
    max_abs = std::max(max_abs, std::abs(x));
  };
  switch (o.kind) {
    case OuterKind::kAverage:
    case OuterKind::kDelayedNesterov:  // not in sync mode (validated)
      for (size_t i = 0; i < model.size(); ++i) put(i, model[i] + average_then_next[i]);
      break;
    case OuterKind::kSgd: {
      // torch.optim.SGD on the pseudo-gradient g = -D_avg, dampening 0: b = g at the first step.
      std::vector<float>& b = buffers_[0];
      for (size_t i = 0; i < model.size(); ++i) {
        const float g = -average_then_next[i];
        b[i] = first ? g : mu * b[i] + g;
        put(i, model[i] - lr * (o.nesterov ? g + mu * b[i] : b[i]));
      }
      break;
    }
    case OuterKind::kSlowMo: {
      // buf = beta buf + g / gamma; x -= alpha gamma buf (momentum free of the inner schedule).
      std::vector<float>& buf = buffers_[0];
      const float gamma = static_cast<float>(inner_lr > 0 ? inner_lr : 1.0);
      for (size_t i = 0; i < model.size(); ++i) {
        const float g = -average_then_next[i];
        buf[i] = mu * buf[i] + g / gamma;
        put(i, model[i] - lr * gamma * buf[i]);
      }
      break;
    }
    case OuterKind::kFedAdam: {
      std::vector<float>& m = buffers_[0];
      std::vector<float>& v = buffers_[1];
      const double r = static_cast<double>(steps_) + 1;
      const float b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2);
      const float step = static_cast<float>(o.lr * std::sqrt(1 - std::pow(o.beta2, r)) /
                                            (1 - std::pow(o.beta1, r)));
      const float tau = static_cast<float>(o.tau);
      for (size_t i = 0; i < model.size(); ++i) {
        const float d = average_then_next[i];
        m[i] = b1 * m[i] + (1 - b1) * d;
        v[i] = b2 * v[i] + (1 - b2) * d * d;
        put(i, model[i] + step * m[i] / (std::sqrt(v[i]) + tau));
      }
      break;
    }
  }
  ++steps_;
  return max_abs;
}

void OuterOptimizer::ApplyUpdate(absl::Span<float> model, absl::Span<const float> update,
                                 float staleness_weight) {
  // Delayed Nesterov (Liu et al. 2024): g = -s D; x -= eta g / N and acc += g on every update;
  // every N-th update, m = mu m + acc / N, x -= eta mu m, acc = 0.
  std::vector<float>& m = buffers_[0];
  std::vector<float>& acc = buffers_[1];
  const float lr = static_cast<float>(options_.lr), mu = static_cast<float>(options_.momentum);
  const float inv_n = 1.0f / static_cast<float>(options_.period);
  for (size_t i = 0; i < model.size(); ++i) {
    const float g = -staleness_weight * update[i];
    model[i] -= lr * g * inv_n;
    acc[i] += g;
  }
  ++steps_;
  if (steps_ % static_cast<uint64_t>(options_.period) != 0) return;
  for (size_t i = 0; i < model.size(); ++i) {
    m[i] = mu * m[i] + acc[i] * inv_n;
    model[i] -= lr * mu * m[i];
    acc[i] = 0.0f;
  }
}

absl::Status OuterOptimizer::Restore(uint64_t steps, std::vector<std::vector<float>> buffers) {
  if (buffers.size() != buffers_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the checkpoint holds %d outer-optimizer buffers; --outer_optimizer=%s keeps %d",
        buffers.size(), OuterKindName(options_.kind), buffers_.size()));
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].size() != buffers_[i].size()) {
      return absl::InvalidArgumentError("an outer-optimizer buffer of the wrong size");
    }
  }
  steps_ = steps;
  buffers_ = std::move(buffers);
  return absl::OkStatus();
}

}  // namespace ps
