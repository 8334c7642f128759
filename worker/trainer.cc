#include "worker/trainer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/codec.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace ps {
namespace {

absl::Status CheckShape(const Dataset& data, const ModelSpec& spec, absl::string_view what) {
  if (data.dim() != spec.input_dim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s has %d features per example, but the server's model expects input_dim=%d", what,
        data.dim(), spec.input_dim));
  }
  for (int64_t i = 0; i < data.size(); ++i) {
    if (data.labels[i] < 0 || data.labels[i] >= spec.num_classes) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: example %d has label %d, outside [0, num_classes=%d)", what, i,
                          data.labels[i], spec.num_classes));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Dataset> Load(const DataOptions& data, const ModelSpec& spec, bool train) {
  absl::StatusOr<Dataset> loaded;
  const int64_t limit = train ? data.train_limit : data.test_limit;
  if (data.format == "fashion_mnist") {
    loaded = LoadFashionMnist(data.fashion_mnist_dir, train, limit);
  } else if (data.format == "libsvm") {
    const std::string& file = train ? data.train_file : data.test_file;
    if (file.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("libsvm data needs --", train ? "train" : "test", "_file"));
    }
    loaded = LoadLibsvm(file, spec.input_dim, spec.num_classes, limit);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown data format '", data.format, "'; choose fashion_mnist or libsvm"));
  }
  if (!loaded.ok()) return loaded.status();
  PS_RETURN_IF_ERROR(CheckShape(*loaded, spec, train ? "training data" : "test data"));
  loaded->num_classes = spec.num_classes;
  return loaded;
}

std::string Megabytes(uint64_t bytes) { return absl::StrFormat("%.1fMB", bytes / 1e6); }

}  // namespace

absl::StatusOr<Dataset> LoadTrainingData(const DataOptions& data, const ModelSpec& spec) {
  return Load(data, spec, /*train=*/true);
}

absl::StatusOr<Dataset> LoadTestData(const DataOptions& data, const ModelSpec& spec) {
  return Load(data, spec, /*train=*/false);
}

EvalResult Evaluate(const Model& model, absl::Span<const float> params, const Dataset& data) {
  constexpr int64_t kBlock = 2048;  // bounds the memory of activations
  double loss = 0.0;
  int64_t correct = 0;
  for (int64_t start = 0; start < data.size(); start += kBlock) {
    const int64_t n = std::min(kBlock, data.size() - start);
    const RowMatrix block = data.features.middleRows(start, n);
    loss += model.EvaluateBatch(params, block, absl::MakeConstSpan(data.labels).subspan(start, n),
                                &correct);
  }
  EvalResult result;
  if (data.size() > 0) {
    result.loss = loss / data.size();
    result.accuracy = static_cast<double>(correct) / data.size();
  }
  return result;
}

StepSchedule WorkerSchedule(const v1::TrainingConfig& config, uint64_t total_steps) {
  return StepSchedule{config.lr_schedule(), config.learning_rate(), config.lr_decay(), total_steps};
}

uint64_t RoundsFor(const v1::TrainingConfig& config, int64_t total_train_examples) {
  if (config.rounds() > 0) return config.rounds();
  // Every worker runs the same number of rounds, computed from the whole set so that all agree.
  const double per_round =
      static_cast<double>(config.num_workers()) * config.local_steps() * config.batch_size();
  return static_cast<uint64_t>(
      std::max(1.0, std::ceil(config.epochs() * total_train_examples / per_round)));
}

Trainer::Trainer(const TrainerOptions& options, Session* session)
    : options_(options), session_(session) {}

void Trainer::Progress(const std::string& line) {
  if (!options_.quiet) std::printf("%s%s\n", prefix_.c_str(), line.c_str());
  std::fflush(stdout);
}

namespace {

std::string Describe(const v1::TrainingConfig& config, const JoinedRun& joined,
                     const ModelSpec& spec, uint32_t h, uint64_t rounds, int64_t train_size,
                     int64_t total_examples, int64_t test_size) {
  const auto& up = config.update_encoding();
  const auto& down = config.pull_encoding();
  return absl::StrFormat(
      "joined as worker id %d, rank %d of %d: %s %s, %s, H=%d, %d rounds, %d training examples "
      "(of %d), %d test examples, %d parameters; updates %s%s%s, pulls %s",
      joined.worker_id, joined.rank, config.num_workers(),
      config.mode() == v1::AGGREGATION_MODE_SYNC ? "sync" : "async",
      config.update_kind() == v1::UPDATE_KIND_GRADIENT ? "gradient" : "Local SGD", spec.type, h,
      rounds, train_size, total_examples, test_size, joined.layout.size(), EncodingName(up),
      up.encoding() == v1::ENCODING_QSGD && config.bits_policy() == v1::BITS_POLICY_DQSGD
          ? " with DQ-SGD bits"
          : "",
      config.error_feedback() && up.encoding() != v1::ENCODING_FP32 ? " with error feedback" : "",
      down.encoding() != v1::ENCODING_FP32 && down.encoding() != v1::ENCODING_UNSPECIFIED
          ? absl::StrCat(EncodingName(down), " deltas")
          : "FP32");
}

}  // namespace

absl::StatusOr<Trainer::Setup> Trainer::Prepare() {
  // The server's settings name the built-in model; its layout and initial values (from the
  // server's seed) go with the Join: a server without a model takes them as version 1.
  PS_ASSIGN_OR_RETURN(v1::StatusResponse server_status, session_->ServerStatus());
  PS_ASSIGN_OR_RETURN(ModelValues initial, BuiltinInitialModel(server_status.config()));
  Setup setup;
  PS_ASSIGN_OR_RETURN(setup.joined, session_->Join(initial));
  const v1::TrainingConfig& config = setup.joined.config;
  prefix_ = absl::StrFormat("[worker %d] ", setup.joined.rank);
  setup.spec = ModelSpecFromConfig(config);
  PS_ASSIGN_OR_RETURN(setup.model, CreateModel(setup.spec));

  PS_ASSIGN_OR_RETURN(Dataset all_train, LoadTrainingData(options_.data, setup.spec));
  PS_ASSIGN_OR_RETURN(setup.test, LoadTestData(options_.data, setup.spec));
  const PartitionScheme scheme = config.partition() == v1::PARTITION_LABEL_SORTED
                                     ? PartitionScheme::kLabelSorted
                                     : PartitionScheme::kIid;
  setup.train = all_train.Subset(PartitionIndices(all_train, static_cast<int>(config.num_workers()),
                                                  static_cast<int>(setup.joined.rank), scheme,
                                                  config.data_seed()));
  if (setup.train.size() == 0) {
    return absl::FailedPreconditionError(absl::StrFormat("worker %d of %d got no training examples",
                                                         setup.joined.rank, config.num_workers()));
  }
  setup.rounds = RoundsFor(config, all_train.size());
  setup.h = config.update_kind() == v1::UPDATE_KIND_GRADIENT ? 1 : config.local_steps();
  Progress(Describe(config, setup.joined, setup.spec, setup.h, setup.rounds, setup.train.size(),
                    all_train.size(), setup.test.size()));
  return setup;
}

namespace {

// Overlap: the one push (and pull) in flight, on a thread of its own. Joined before the session
// is used again, and on every way out of Run.
struct InflightPush {
  std::thread thread;
  absl::StatusOr<RoundResult> result;
  std::atomic<bool> done{false};  // set by the thread when its push and pull are over
  ~InflightPush() {
    if (thread.joinable()) thread.join();
  }
  bool active() const { return thread.joinable(); }
  absl::StatusOr<RoundResult> Wait() {
    thread.join();
    done = false;
    return std::move(result);
  }
};

}  // namespace

absl::StatusOr<TrainingResult> Trainer::Run() {
  const absl::Time start = absl::Now();
  PS_ASSIGN_OR_RETURN(Setup setup, Prepare());
  const v1::TrainingConfig& config = setup.joined.config;
  const Model& model = *setup.model;
  const uint64_t rounds = setup.rounds;
  const uint32_t h = setup.h;
  const StepSchedule schedule = WorkerSchedule(config, rounds * h);
  BatchSampler sampler(&setup.train, static_cast<int>(config.batch_size()),
                       SamplerSeed(config.data_seed(), setup.joined.rank));

  const absl::Span<const float> pulled = session_->model();
  std::vector<float> global(pulled.begin(), pulled.end());
  const size_t d = global.size();
  std::vector<float> local(d), delta(d), grad(d);
  // In sync mode every round is one version, so a worker that joins a run in progress (a
  // replacement, or any worker after the server resumed from a checkpoint) takes up the schedule
  // at the server's round. Async workers keep their own count: they start at different times
  // anyway, and each runs all of its rounds.
  const bool sync = config.mode() == v1::AGGREGATION_MODE_SYNC;
  auto round_of = [&](uint64_t v) { return std::min(rounds, v - 1); };

  TrainingResult result;
  result.config = config;
  result.worker_id = setup.joined.worker_id;
  result.rank = setup.joined.rank;
  RowMatrix batch_x;
  std::vector<int32_t> batch_y;
  absl::Time last_progress = absl::Now();
  double loss_sum = 0.0;
  uint64_t loss_count = 0;
  double eval_seconds = 0.0;
  const double train_start_s = absl::ToDoubleSeconds(absl::Now() - start);
  // Evaluates `global` on the test set and tells options_.on_eval.
  auto evaluate = [&](uint64_t round, double train_loss) {
    const absl::Time eval_start = absl::Now();
    const EvalResult eval = Evaluate(model, global, setup.test);
    eval_seconds += absl::ToDoubleSeconds(absl::Now() - eval_start);
    if (options_.on_eval) {
      EvalRecord record;
      record.round = round;
      record.rounds = rounds;
      record.version = session_->version();
      record.elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);
      record.train_start_s = train_start_s;
      record.eval_s = eval_seconds;
      record.train_loss = train_loss;
      record.test = eval;
      record.wire = session_->counters().wire;
      options_.on_eval(record);
    }
    return eval;
  };
  auto report = [&](const EvalResult& eval) {
    v1::EvalReport r;
    r.set_version(session_->version());
    r.set_test_loss(eval.loss);
    r.set_test_accuracy(eval.accuracy);
    return session_->Report(r);
  };

  const uint64_t first_round = sync ? round_of(session_->version()) : 0;
  uint64_t rounds_done = first_round;
  if (first_round > 0) {
    Progress(absl::StrFormat("the run is at version %d: starting at round %d of %d",
                             session_->version(), first_round + 1, rounds));
  }
  uint32_t last_bits = 32;
  const bool gradient = config.update_kind() == v1::UPDATE_KIND_GRADIENT;
  if (options_.overlap && gradient) {
    return absl::InvalidArgumentError(
        "--overlap needs model-delta updates (--update=delta): a gradient is needed at once");
  }
  const bool overlap = options_.overlap;
  InflightPush inflight;
  std::vector<float> sending, sent;  // overlap: the update in flight, and the model it came from
  if (overlap) local = global;
  for (uint64_t round = first_round; round < rounds; ++round) {
    if (options_.stop != nullptr && options_.stop->load()) {
      Progress(absl::StrFormat("stopping after %d of %d rounds, as asked", round, rounds));
      result.stopped_early = true;
      break;
    }
    // H local steps from the global model. The delta is accumulated directly (x = global + delta)
    // so that with K = 1 and H = 1 the server's update reproduces plain SGD bit for bit.
    double round_loss = 0.0;
    if (gradient) {
      sampler.Next(&batch_x, &batch_y);
      round_loss = model.LossAndGradient(global, batch_x, batch_y, absl::MakeSpan(grad));
      absl::SleepFor(options_.step_delay);
    } else {
      if (!overlap) {  // with overlap the local model goes on from where it was
        std::fill(delta.begin(), delta.end(), 0.0f);
        local = global;
      }
      for (uint32_t step = 0; step < h; ++step) {
        sampler.Next(&batch_x, &batch_y);
        round_loss += model.LossAndGradient(local, batch_x, batch_y, absl::MakeSpan(grad));
        const float lr = schedule.At(round * h + step);
        for (size_t i = 0; i < d; ++i) {
          if (overlap) {
            local[i] -= lr * grad[i];
          } else {
            delta[i] -= lr * grad[i];
            local[i] = global[i] + delta[i];
          }
        }
        absl::SleepFor(options_.step_delay);
        if (inflight.active() && !inflight.done) ++result.steps_overlapped;
      }
      round_loss /= h;
    }
    loss_sum += round_loss;
    ++loss_count;
    result.steps += h;

    UpdateInfo info;
    info.sample_count = uint64_t{h} * config.batch_size();
    info.train_loss = round_loss;
    info.learning_rate = schedule.At(round * h);  // SlowMo divides by the inner step size
    info.round = round;
    info.total_rounds = rounds;
    // Overlap: the previous round's push and pull ran behind these steps; its result is the
    // anchor. Without: this round's push and pull, now.
    std::optional<RoundResult> pushed;
    if (!overlap) {
      PS_ASSIGN_OR_RETURN(pushed, session_->Push(gradient ? grad : delta, info));
    } else if (inflight.active()) {
      PS_ASSIGN_OR_RETURN(pushed, inflight.Wait());
    }
    if (pushed.has_value()) {
      last_bits = static_cast<uint32_t>(pushed->bits);
      const absl::Span<const float> next = session_->model();
      std::copy(next.begin(), next.end(), global.begin());
      ++result.rounds;
    }
    rounds_done = round + 1;
    if (sync && pushed.has_value() && pushed->rejoined) {
      // Re-joined, possibly a server that resumed from an older checkpoint: follow its schedule,
      // so that rounds lost with the server are run again.
      round = round_of(pushed->version) - 1;  // the loop's ++ makes it round_of(...)
      if (overlap) {                          // start over from the server's model
        local = global;
        sent.clear();
      }
      continue;
    }

    const bool eval_now =
        config.eval_every() > 0 && (round + 1) % config.eval_every() == 0 && round + 1 < rounds;
    EvalResult eval;
    if (eval_now) {
      eval = evaluate(round + 1, loss_sum / std::max<uint64_t>(loss_count, 1));
      PS_RETURN_IF_ERROR(report(eval));
    }
    if (eval_now || absl::Now() - last_progress >= options_.progress_every) {
      const ClientWireStats wire = session_->counters().wire;
      Progress(absl::StrFormat(
          "round %d/%d version %d train_loss %.4f%s lr %.4g bits %d sent %s (fp32 %s) recv %s "
          "(fp32 %s) elapsed %.1fs",
          round + 1, rounds, session_->version(), loss_sum / loss_count,
          eval_now ? absl::StrFormat(" test_loss %.4f test_acc %.4f", eval.loss, eval.accuracy)
                   : "",
          schedule.At((round + 1) * h), last_bits, Megabytes(wire.bytes_sent),
          Megabytes(wire.raw_bytes_sent), Megabytes(wire.bytes_received),
          Megabytes(wire.raw_bytes_received), absl::ToDoubleSeconds(absl::Now() - start)));
      last_progress = absl::Now();
      result.final_train_loss = loss_sum / loss_count;
      loss_sum = 0.0;
      loss_count = 0;
    }
    if (overlap) {
      // The model sent last round is pulled towards the global one that came back (the steps
      // taken since stay); then this round's change from the global model goes out, and the
      // next H steps run while it travels.
      const float a = options_.overlap_pullback;
      sending.resize(d);
      if (sent.size() == d) {
        for (size_t i = 0; i < d; ++i) local[i] -= a * (sent[i] - global[i]);
      }
      sent = local;
      for (size_t i = 0; i < d; ++i) sending[i] = local[i] - global[i];
      inflight.thread = std::thread([this, &inflight, &sending, info] {
        inflight.result = session_->Push(sending, info);
        inflight.done = true;
      });
    }
  }
  if (inflight.active()) {  // the last round's push
    PS_RETURN_IF_ERROR(inflight.Wait().status());
    ++result.rounds;
  }
  if (loss_count > 0) result.final_train_loss = loss_sum / loss_count;

  // The freshest model there is now (in async mode other workers may still be pushing).
  PS_ASSIGN_OR_RETURN(const uint64_t version, session_->Refresh(absl::ZeroDuration()));
  const absl::Span<const float> last = session_->model();
  std::copy(last.begin(), last.end(), global.begin());
  result.final_test = evaluate(rounds_done, result.final_train_loss);
  result.final_version = version;
  PS_RETURN_IF_ERROR(report(result.final_test));
  PS_RETURN_IF_ERROR(session_->Leave());
  const SessionCounters counters = session_->counters();
  result.wire = counters.wire;
  result.stale_refusals = counters.stale_refusals;
  result.stale_repushes = counters.stale_repushes;
  result.rejoins = counters.rejoins;
  if (counters.updates > 0) result.mean_update_bits = counters.mean_update_bits;
  result.wall_time_s = absl::ToDoubleSeconds(absl::Now() - start);
  result.final_model = std::move(global);
  Progress(
      absl::StrFormat("done: %d rounds, version %d, test_loss %.4f test_acc %.4f, sent %s "
                      "recv %s in %.1fs",
                      result.rounds, version, result.final_test.loss, result.final_test.accuracy,
                      Megabytes(result.wire.bytes_sent), Megabytes(result.wire.bytes_received),
                      result.wall_time_s));
  return result;
}

}  // namespace ps
