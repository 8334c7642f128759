#include "worker/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

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

absl::Status ApplyOverrides(const CompressionOverrides& overrides, v1::TrainingConfig* config) {
  v1::EncodingParams* update = config->mutable_update_encoding();
  if (!overrides.update_encoding.empty()) {
    PS_ASSIGN_OR_RETURN(v1::Encoding encoding, ParseEncoding(overrides.update_encoding));
    const auto& allowed = config->allowed_encodings();
    if (std::find(allowed.begin(), allowed.end(), encoding) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the server does not allow update encoding ", overrides.update_encoding));
    }
    update->set_encoding(encoding);
  }
  if (update->encoding() != v1::ENCODING_FP32 && update->bucket_size() == 0) {
    update->set_bucket_size(512);
  }
  if (update->encoding() == v1::ENCODING_QSGD &&
      update->scaling() == v1::QUANT_SCALING_UNSPECIFIED) {
    update->set_scaling(v1::QUANT_SCALING_MAX_ABS);
  }
  if (overrides.bits > 0) update->set_bits(overrides.bits);
  if (update->encoding() == v1::ENCODING_QSGD && update->bits() == 0) update->set_bits(4);
  if (overrides.bits_policy == "fixed") {
    config->set_bits_policy(v1::BITS_POLICY_FIXED);
  } else if (overrides.bits_policy == "dqsgd") {
    config->set_bits_policy(v1::BITS_POLICY_DQSGD);
  } else if (!overrides.bits_policy.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bits_policy=", overrides.bits_policy, " is not one of: fixed, dqsgd"));
  }
  if (config->min_bits() == 0) config->set_min_bits(2);
  if (config->max_bits() == 0) config->set_max_bits(8);
  if (update->encoding() == v1::ENCODING_UNSPECIFIED) update->set_encoding(v1::ENCODING_FP32);
  return ValidateEncodingParams(*update);
}

Trainer::Trainer(const TrainerOptions& options, ShardedClient* client)
    : options_(options), client_(client) {}

void Trainer::Progress(const std::string& line) {
  if (!options_.quiet) std::printf("%s%s\n", prefix_.c_str(), line.c_str());
  std::fflush(stdout);
}

// Sharded sync rounds can fall out of phase: after a partition, some workers hold shard 0's
// model one round behind and others shard 1's. Each group's push is then refused by one shard,
// whose round waits for the deadline, and at the deadline both groups are out of phase again: a
// livelock of refused updates, one round per deadline. A push refused as exactly one round late
// by shard i while another shard took this round's update is therefore pushed again, on shard
// i's current version, so that every shard's open round gets this worker's update and closes
// without waiting for the deadline; from then on the worker holds one round on every shard.
// (An update more than one round late, or refused by every shard, is dropped as before.)
absl::Status Trainer::RepushOneRoundLate(v1::UpdateKind kind, uint64_t sample_count,
                                         const std::vector<v1::EncodingParams>& encodings,
                                         const std::vector<std::string>& payloads,
                                         double train_loss, double learning_rate,
                                         absl::Span<float> global, std::vector<uint64_t>* versions,
                                         std::vector<uint64_t>* have,
                                         std::vector<absl::StatusOr<v1::PushAck>>* acks) {
  const size_t n = acks->size();
  if (std::none_of(acks->begin(), acks->end(), [](const auto& a) { return a.ok(); })) {
    return absl::OkStatus();
  }
  for (size_t i = 0; i < n; ++i) {
    if (!absl::IsFailedPrecondition((*acks)[i].status())) continue;
    // The update is already encoded, so the shard's part of `global` may take its current model.
    std::vector<bool> which(n, false);
    which[i] = true;
    std::vector<absl::StatusOr<PullResult>> pulled =
        client_->Pull(*versions, which, absl::ZeroDuration(), global);
    if (absl::IsNotFound(pulled[i].status())) continue;  // re-joined below, as for the push
    if (!pulled[i].ok()) return pulled[i].status();
    if (!pulled[i]->changed) continue;
    const uint64_t late_by = pulled[i]->version - (*versions)[i];
    (*versions)[i] = pulled[i]->version;
    if (late_by != 1) continue;
    absl::StatusOr<v1::PushAck> again =
        client_->PushShard(i, kind, (*versions)[i], sample_count, encodings[i], payloads[i],
                           train_loss, learning_rate);
    if (!again.ok()) continue;  // handled as the first refusal would have been
    (*acks)[i] = std::move(again);
    (*have)[i] = (*versions)[i];  // now wait for the round it was pushed to
    ++stale_repushes_;
    LogWarning(absl::StrCat(prefix_, "update refused as one round late by shard ", i,
                            "; pushed again on its version ", (*versions)[i],
                            " to bring the shards back into phase"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainingResult> Trainer::Run() {
  const absl::Time start = absl::Now();
  // The server's settings name the built-in model; its layout and initial values (from the
  // server's seed) go with the Join: a server without a model takes them as version 1.
  PS_ASSIGN_OR_RETURN(v1::StatusResponse server_status, client_->Status());
  PS_ASSIGN_OR_RETURN(ModelValues initial, BuiltinInitialModel(server_status.config()));
  PS_ASSIGN_OR_RETURN(v1::JoinResponse joined, client_->Join(std::nullopt, &initial));
  initial.values = std::vector<float>();
  v1::TrainingConfig config = joined.config();
  PS_RETURN_IF_ERROR(ApplyOverrides(options_.overrides, &config));
  prefix_ = absl::StrFormat("[worker %d] ", joined.rank());
  const ModelSpec spec = ModelSpecFromConfig(config);
  PS_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, CreateModel(spec));
  client_->StartHeartbeats();

  PS_ASSIGN_OR_RETURN(Dataset all_train, LoadTrainingData(options_.data, spec));
  PS_ASSIGN_OR_RETURN(Dataset test, LoadTestData(options_.data, spec));
  const PartitionScheme scheme = config.partition() == v1::PARTITION_LABEL_SORTED
                                     ? PartitionScheme::kLabelSorted
                                     : PartitionScheme::kIid;
  const Dataset train = all_train.Subset(
      PartitionIndices(all_train, static_cast<int>(config.num_workers()),
                       static_cast<int>(joined.rank()), scheme, config.data_seed()));
  const int64_t total_examples = all_train.size();
  all_train = Dataset();
  if (train.size() == 0) {
    return absl::FailedPreconditionError(absl::StrFormat("worker %d of %d got no training examples",
                                                         joined.rank(), config.num_workers()));
  }

  const uint64_t rounds = RoundsFor(config, total_examples);
  const uint32_t h = config.update_kind() == v1::UPDATE_KIND_GRADIENT ? 1 : config.local_steps();
  const uint64_t total_steps = rounds * h;
  const StepSchedule schedule = WorkerSchedule(config, total_steps);
  BatchSampler sampler(&train, static_cast<int>(config.batch_size()),
                       SamplerSeed(config.data_seed(), joined.rank()));
  Progress(absl::StrFormat(
      "joined as worker id %d, rank %d of %d: %s %s, %s, H=%d, %d rounds, %d training examples "
      "(of %d), %d test examples, %d parameters; updates %s%s%s, pulls %s",
      joined.worker_id(), joined.rank(), config.num_workers(),
      config.mode() == v1::AGGREGATION_MODE_SYNC ? "sync" : "async",
      config.update_kind() == v1::UPDATE_KIND_GRADIENT ? "gradient" : "Local SGD", spec.type, h,
      rounds, train.size(), total_examples, test.size(), joined.model_size(),
      EncodingName(config.update_encoding()),
      config.update_encoding().encoding() == v1::ENCODING_QSGD &&
              config.bits_policy() == v1::BITS_POLICY_DQSGD
          ? " with DQ-SGD bits"
          : "",
      config.error_feedback() && config.update_encoding().encoding() != v1::ENCODING_FP32
          ? " with error feedback"
          : "",
      config.pull_encoding().encoding() != v1::ENCODING_FP32 &&
              config.pull_encoding().encoding() != v1::ENCODING_UNSPECIFIED
          ? absl::StrCat(EncodingName(config.pull_encoding()), " deltas")
          : "FP32"));
  // One compressor per shard: each shard gets its own message, with its own scales, bits and
  // error-feedback residual. With one shard this is the whole model.
  const size_t num_shards = client_->num_shards();
  const std::vector<KeyRange>& ranges = client_->ranges();
  std::vector<UpdateCompressor> compressors;
  for (size_t i = 0; i < num_shards; ++i) {
    compressors.emplace_back(config, ranges[i].size(),
                             SamplerSeed(config.data_seed(), joined.rank()) + 17 + 1000 * i);
  }
  std::vector<v1::EncodingParams> encodings(num_shards);
  std::vector<std::string> payloads(num_shards);
  double bits_sum = 0.0;

  const size_t d = joined.model_size();
  std::vector<float> global(d), local(d), delta(d), grad(d);
  // The version of each shard's part of `global`.
  std::vector<uint64_t> versions(num_shards, 0);

  // In sync mode every round is one version, so a worker that joins a run in progress (a
  // replacement, or any worker after the server resumed from a checkpoint) takes up the schedule
  // at the server's round. Async workers keep their own count: they start at different times
  // anyway, and each runs all of its rounds.
  const bool sync = config.mode() == v1::AGGREGATION_MODE_SYNC;
  auto round_of = [&](uint64_t v) { return std::min(rounds, v - 1); };
  auto oldest_version = [&] { return *std::min_element(versions.begin(), versions.end()); };

  TrainingResult result;
  // A shard answers NOT_FOUND for our id after it restarted (ids are never reused) or after our
  // lease ran out: join it again with the same rank and take its current model in full. The loop
  // then follows the server's version, so rounds a server lost are trained again.
  auto rejoin = [&](size_t i) -> absl::Status {
    LogWarning(absl::StrCat(prefix_, "server shard ", i,
                            " does not know this worker (restarted, or the lease ran out): "
                            "joining again as rank ",
                            joined.rank()));
    // A shard that came back without any model takes ours: the newest there is.
    ModelValues current{initial.layout, global};
    PS_RETURN_IF_ERROR(client_->Rejoin(i, static_cast<int>(joined.rank()), &current, versions[i]));
    ++result.rejoins;
    compressors[i].ResetResidual();
    versions[i] = 0;
    return absl::OkStatus();
  };
  // Brings every shard i newer than have[i]. In sync mode also to the same number of versions
  // past `have` on every shard, so that the model is that of one round everywhere (a shard that
  // stays behind longer than the pull wait is taken as it is, with a warning, rather than hang).
  auto pull_all = [&](std::vector<uint64_t> have) -> absl::Status {
    const absl::Time since = absl::Now();
    while (true) {
      std::vector<bool> which(num_shards);
      bool behind = false;
      for (size_t i = 0; i < num_shards; ++i) behind |= which[i] = versions[i] <= have[i];
      if (!behind) {
        if (!sync || num_shards == 1) return absl::OkStatus();
        // Shards pulled in full (have 0: just joined or re-joined) have no round to match.
        uint64_t most = 0;
        for (size_t i = 0; i < num_shards; ++i) {
          if (have[i] > 0) most = std::max(most, versions[i] - have[i]);
        }
        for (size_t i = 0; i < num_shards; ++i) {
          behind |= which[i] = have[i] > 0 && versions[i] - have[i] < most;
        }
        if (!behind) return absl::OkStatus();
        if (absl::Now() - since > options_.pull_wait) {
          LogWarning(absl::StrCat(prefix_, "server shards are at different rounds; going on"));
          return absl::OkStatus();
        }
      }
      std::vector<absl::StatusOr<PullResult>> pulled =
          client_->Pull(versions, which, options_.pull_wait, absl::MakeSpan(global));
      bool changed = false;
      for (size_t i = 0; i < num_shards; ++i) {
        if (!which[i]) continue;
        if (absl::IsNotFound(pulled[i].status())) {
          PS_RETURN_IF_ERROR(rejoin(i));
          have[i] = 0;
        } else if (!pulled[i].ok()) {
          return pulled[i].status();
        } else if (pulled[i]->changed) {
          versions[i] = pulled[i]->version;
          changed = true;
        }
      }
      if (!changed) {
        Progress(absl::StrFormat("waiting for the round on version %d to close (%.0fs so far)",
                                 have[0], absl::ToDoubleSeconds(absl::Now() - since)));
      }
    }
  };
  PS_RETURN_IF_ERROR(pull_all(versions));

  result.config = config;
  result.worker_id = joined.worker_id();
  result.rank = joined.rank();
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
    const EvalResult eval = Evaluate(*model, global, test);
    eval_seconds += absl::ToDoubleSeconds(absl::Now() - eval_start);
    if (options_.on_eval) {
      EvalRecord record;
      record.round = round;
      record.rounds = rounds;
      record.version = versions[0];
      record.elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);
      record.train_start_s = train_start_s;
      record.eval_s = eval_seconds;
      record.train_loss = train_loss;
      record.test = eval;
      record.wire = client_->wire();
      options_.on_eval(record);
    }
    return eval;
  };

  const uint64_t first_round = sync ? round_of(oldest_version()) : 0;
  uint64_t rounds_done = first_round;
  if (first_round > 0) {
    Progress(absl::StrFormat("the run is at version %d: starting at round %d of %d",
                             oldest_version(), first_round + 1, rounds));
  }
  for (uint64_t round = first_round; round < rounds; ++round) {
    if (options_.stop != nullptr && options_.stop->load()) {
      Progress(absl::StrFormat("stopping after %d of %d rounds, as asked", round, rounds));
      result.stopped_early = true;
      break;
    }
    // H local steps from the global model. The delta is accumulated directly (x = global + delta)
    // so that with K = 1 and H = 1 the server's update reproduces plain SGD bit for bit.
    double round_loss = 0.0;
    const v1::UpdateKind kind = config.update_kind();
    if (kind == v1::UPDATE_KIND_GRADIENT) {
      sampler.Next(&batch_x, &batch_y);
      round_loss = model->LossAndGradient(global, batch_x, batch_y, absl::MakeSpan(grad));
    } else {
      std::fill(delta.begin(), delta.end(), 0.0f);
      local = global;
      for (uint32_t step = 0; step < h; ++step) {
        sampler.Next(&batch_x, &batch_y);
        round_loss += model->LossAndGradient(local, batch_x, batch_y, absl::MakeSpan(grad));
        const float lr = schedule.At(round * h + step);
        for (size_t i = 0; i < d; ++i) {
          delta[i] -= lr * grad[i];
          local[i] = global[i] + delta[i];
        }
      }
      round_loss /= h;
    }
    loss_sum += round_loss;
    ++loss_count;
    result.steps += h;

    const std::vector<float>& update = kind == v1::UPDATE_KIND_GRADIENT ? grad : delta;
    for (size_t i = 0; i < num_shards; ++i) {
      PS_RETURN_IF_ERROR(compressors[i].Compress(
          absl::MakeConstSpan(update).subspan(ranges[i].begin, ranges[i].size()), round, rounds,
          &encodings[i], &payloads[i]));
      bits_sum += static_cast<double>(compressors[i].last_bits()) / num_shards;
    }
    // The round's step size goes with the update (the outer optimizer SlowMo divides by it).
    const double round_lr = schedule.At(round * h);
    std::vector<absl::StatusOr<v1::PushAck>> acks =
        client_->Push(kind, versions, uint64_t{h} * config.batch_size(), encodings, payloads,
                      round_loss, round_lr);
    const uint64_t rejoins_before = result.rejoins;
    std::vector<uint64_t> have = versions;
    if (sync && num_shards > 1) {
      PS_RETURN_IF_ERROR(RepushOneRoundLate(kind, uint64_t{h} * config.batch_size(), encodings,
                                            payloads, round_loss, round_lr, absl::MakeSpan(global),
                                            &versions, &have, &acks));
    }
    for (size_t i = 0; i < num_shards; ++i) {
      if (acks[i].ok()) continue;
      if (absl::IsNotFound(acks[i].status())) {
        PS_RETURN_IF_ERROR(rejoin(i));
        have[i] = 0;
      } else if (absl::IsFailedPrecondition(acks[i].status())) {
        // Too stale: this round's work is dropped; continue from the current model, and forget
        // the residual, which belonged to updates of an older model.
        ++result.stale_refusals;
        compressors[i].ResetResidual();
        LogWarning(absl::StrCat(prefix_, "update refused: ", acks[i].status().message()));
      } else {
        return acks[i].status();
      }
    }
    PS_RETURN_IF_ERROR(pull_all(have));
    ++result.rounds;
    rounds_done = round + 1;
    if (sync && rejoins_before != result.rejoins) {
      // Re-joined, possibly a server that resumed from an older checkpoint: follow its schedule,
      // so that rounds lost with the server are run again.
      round = round_of(oldest_version()) - 1;  // the loop's ++ makes it round_of(...)
      continue;
    }

    const bool eval_now =
        config.eval_every() > 0 && (round + 1) % config.eval_every() == 0 && round + 1 < rounds;
    EvalResult eval;
    if (eval_now) {
      eval = evaluate(round + 1, loss_sum / std::max<uint64_t>(loss_count, 1));
      v1::EvalReport report;
      report.set_version(versions[0]);
      report.set_test_loss(eval.loss);
      report.set_test_accuracy(eval.accuracy);
      if (absl::Status s = client_->Heartbeat(&report); !s.ok()) {
        // The report is only for the server's summary; a forgotten id is noticed at the push.
        if (s.code() != absl::StatusCode::kNotFound) return s;
      }
    }
    if (eval_now || absl::Now() - last_progress >= options_.progress_every) {
      const ClientWireStats wire = client_->wire();
      Progress(absl::StrFormat(
          "round %d/%d version %d train_loss %.4f%s lr %.4g bits %d sent %s (fp32 %s) recv %s "
          "(fp32 %s) elapsed %.1fs",
          round + 1, rounds, versions[0], loss_sum / loss_count,
          eval_now ? absl::StrFormat(" test_loss %.4f test_acc %.4f", eval.loss, eval.accuracy)
                   : "",
          schedule.At((round + 1) * h), compressors[0].last_bits(), Megabytes(wire.bytes_sent),
          Megabytes(wire.raw_bytes_sent), Megabytes(wire.bytes_received),
          Megabytes(wire.raw_bytes_received), absl::ToDoubleSeconds(absl::Now() - start)));
      last_progress = absl::Now();
      result.final_train_loss = loss_sum / loss_count;
      loss_sum = 0.0;
      loss_count = 0;
    }
  }
  if (loss_count > 0) result.final_train_loss = loss_sum / loss_count;
  if (result.rounds > 0) result.mean_update_bits = bits_sum / result.rounds;

  // The freshest model there is now (in async mode other workers may still be pushing). A shard
  // that forgot us keeps the part we have.
  std::vector<absl::StatusOr<PullResult>> last = client_->Pull(
      versions, std::vector<bool>(num_shards, true), absl::ZeroDuration(), absl::MakeSpan(global));
  for (size_t i = 0; i < num_shards; ++i) {
    if (last[i].ok() && last[i]->changed) versions[i] = last[i]->version;
    if (!last[i].ok() && !absl::IsNotFound(last[i].status())) return last[i].status();
  }
  const uint64_t version = versions[0];
  result.final_test = evaluate(rounds_done, result.final_train_loss);
  result.final_version = version;
  v1::EvalReport report;
  report.set_version(version);
  report.set_test_loss(result.final_test.loss);
  report.set_test_accuracy(result.final_test.accuracy);
  // NOT_FOUND here means the server already forgot us: nothing left to leave.
  if (absl::Status s = client_->Heartbeat(&report); !s.ok() && !absl::IsNotFound(s)) return s;
  if (absl::Status s = client_->Leave(); !s.ok() && !absl::IsNotFound(s)) return s;
  result.wire = client_->wire();
  result.stale_repushes = stale_repushes_;
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
