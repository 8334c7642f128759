#include "client/sharded_client.h"

#include <thread>

#include "absl/strings/str_format.h"
#include "common/backoff.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace ps {

absl::StatusOr<std::unique_ptr<ShardedClient>> ShardedClient::Create(
    const PsClientOptions& options) {
  if (options.servers.empty()) {
    return absl::InvalidArgumentError("no server address given (--servers)");
  }
  std::unique_ptr<ShardedClient> client(new ShardedClient(options));
  for (const std::string& address : options.servers) {
    PsClientOptions one = options;
    one.servers = {address};
    PS_ASSIGN_OR_RETURN(std::unique_ptr<PsClient> shard, PsClient::Create(one));
    client->shards_.push_back(std::move(shard));
  }
  client->ranges_.resize(client->shards_.size());
  return client;
}

template <typename Fn>
void ShardedClient::ForEachShard(Fn fn) {
  if (shards_.size() == 1) {
    fn(0);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(shards_.size());
  for (size_t i = 0; i < shards_.size(); ++i) threads.emplace_back([&fn, i] { fn(i); });
  for (std::thread& t : threads) t.join();
}

absl::StatusOr<v1::JoinResponse> ShardedClient::Join(std::optional<int> requested_rank,
                                                     const ModelValues* initial) {
  absl::StatusOr<v1::JoinResponse> joined = JoinAll(requested_rank, initial);
  if (!joined.ok()) {
    // Leave the shards that did let us in, so that no rank is held until a lease runs out.
    for (auto& shard : shards_) {
      if (shard->worker_id() != 0) (void)shard->Leave();
    }
  }
  return joined;
}

absl::StatusOr<v1::JoinResponse> ShardedClient::JoinShard(size_t i, std::optional<int> rank,
                                                          const ModelValues* initial,
                                                          uint64_t version) {
  const Layout* layout = initial != nullptr ? &initial->layout : nullptr;
  Backoff backoff(options_.backoff);
  const absl::Time give_up = absl::Now() + options_.retry_budget;
  while (true) {
    PS_ASSIGN_OR_RETURN(v1::JoinResponse r, shards_[i]->Join(rank, layout));
    if (!r.initial_model_needed()) return r;
    if (initial != nullptr) {
      if (r.shard_end() > initial->values.size() || r.shard_begin() > r.shard_end()) {
        return absl::InternalError("the server asked for a range outside the model");
      }
      absl::Status uploaded = shards_[i]->UploadInitialModel(
          *layout,
          absl::MakeConstSpan(initial->values)
              .subspan(r.shard_begin(), r.shard_end() - r.shard_begin()),
          version);
      // Installed, or another worker's was: either way the next Join takes the server's.
      if (!uploaded.ok() && !absl::IsAlreadyExists(uploaded)) return uploaded;
      LogInfo(absl::StrFormat("event=initial_model shard=%d %s", i,
                              uploaded.ok() ? "uploaded=ours" : "uploaded=another worker's"));
      continue;
    }
    const absl::Duration delay = backoff.NextDelay();
    if (absl::Now() + delay > give_up) {
      return absl::UnavailableError(absl::StrFormat(
          "server shard %d has no model yet, and this client has none to give it", i));
    }
    absl::SleepFor(delay);
  }
}

absl::StatusOr<v1::JoinResponse> ShardedClient::JoinAll(std::optional<int> requested_rank,
                                                        const ModelValues* initial) {
  PS_ASSIGN_OR_RETURN(v1::JoinResponse first, JoinShard(0, requested_rank, initial));
  std::vector<absl::StatusOr<v1::JoinResponse>> joined(shards_.size(), first);
  ForEachShard([&](size_t i) {
    if (i > 0) joined[i] = JoinShard(i, static_cast<int>(first.rank()), initial);
  });
  uint64_t next = 0;
  for (size_t i = 0; i < shards_.size(); ++i) {
    if (!joined[i].ok()) return joined[i].status();
    const v1::JoinResponse& r = *joined[i];
    if (r.shard_count() != shards_.size() || r.shard_index() != i) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "server %d of --servers is shard %d of %d; list all %d shards in shard order", i,
          r.shard_index(), r.shard_count(), r.shard_count()));
    }
    if (r.model_size() != first.model_size() || r.shard_begin() != next) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "shard %d holds [%d, %d) of a %d-parameter model; expected it to start at %d of %d", i,
          r.shard_begin(), r.shard_end(), r.model_size(), next, first.model_size()));
    }
    if (r.rank() != first.rank()) {
      return absl::FailedPreconditionError(
          absl::StrFormat("shard %d gave rank %d, shard 0 rank %d", i, r.rank(), first.rank()));
    }
    if (r.config().SerializeAsString() != first.config().SerializeAsString()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "shard %d trains with other settings than shard 0; start all shards with the same flags",
          i));
    }
    ranges_[i] = {r.shard_begin(), r.shard_end()};
    next = r.shard_end();
  }
  if (next != first.model_size()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the shards cover [0, %d) of a %d-parameter model", next, first.model_size()));
  }
  first.set_shard_begin(0);
  first.set_shard_end(first.model_size());
  return first;
}

absl::Status ShardedClient::DiscoverRanges() {
  std::vector<absl::StatusOr<v1::StatusResponse>> status(shards_.size(),
                                                         absl::UnknownError("not asked"));
  ForEachShard([&](size_t i) { status[i] = shards_[i]->Status(); });
  for (size_t i = 0; i < shards_.size(); ++i) {
    if (!status[i].ok()) return status[i].status();
    const v1::StatusResponse& s = *status[i];
    if (s.shard_count() != shards_.size() || s.shard_index() != i ||
        s.model_size() != status[0]->model_size()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "server %d of --servers is shard %d of %d of a %d-parameter model; list all shards in "
          "shard order",
          i, s.shard_index(), s.shard_count(), s.model_size()));
    }
    const uint64_t d = s.model_size(), n = shards_.size();
    ranges_[i] = {d * i / n, d * (i + 1) / n};
  }
  return absl::OkStatus();
}

absl::Status ShardedClient::Rejoin(size_t i, int rank, const ModelValues* current,
                                   uint64_t version) {
  PS_ASSIGN_OR_RETURN(v1::JoinResponse r, JoinShard(i, rank, current, version));
  if (r.shard_begin() != ranges_[i].begin || r.shard_end() != ranges_[i].end) {
    return absl::FailedPreconditionError(
        absl::StrFormat("shard %d now holds [%d, %d), before [%d, %d)", i, r.shard_begin(),
                        r.shard_end(), ranges_[i].begin, ranges_[i].end));
  }
  return absl::OkStatus();
}

void ShardedClient::StartHeartbeats() {
  for (auto& shard : shards_) shard->StartHeartbeats();
}

absl::Status ShardedClient::Heartbeat(const v1::EvalReport* eval) {
  std::vector<absl::Status> status(shards_.size());
  ForEachShard([&](size_t i) { status[i] = shards_[i]->Heartbeat(eval); });
  for (const absl::Status& s : status) PS_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

absl::Status ShardedClient::Leave() {
  std::vector<absl::Status> status(shards_.size());
  ForEachShard([&](size_t i) { status[i] = shards_[i]->Leave(); });
  for (const absl::Status& s : status) PS_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

std::vector<absl::StatusOr<v1::PushAck>> ShardedClient::Push(
    v1::UpdateKind kind, const std::vector<uint64_t>& base_versions, uint64_t sample_count,
    const std::vector<v1::EncodingParams>& encodings, const std::vector<std::string>& payloads,
    double train_loss, double learning_rate) {
  std::vector<absl::StatusOr<v1::PushAck>> acks(shards_.size(), absl::UnknownError("not sent"));
  ForEachShard([&](size_t i) {
    acks[i] = shards_[i]->PushEncoded(kind, base_versions[i], sample_count, encodings[i],
                                      payloads[i], ranges_[i].size(), train_loss, learning_rate);
  });
  return acks;
}

absl::StatusOr<v1::PushAck> ShardedClient::PushShard(size_t i, v1::UpdateKind kind,
                                                     uint64_t base_version, uint64_t sample_count,
                                                     const v1::EncodingParams& encoding,
                                                     absl::string_view payload, double train_loss,
                                                     double learning_rate) {
  return shards_[i]->PushEncoded(kind, base_version, sample_count, encoding, payload,
                                 ranges_[i].size(), train_loss, learning_rate);
}

std::vector<absl::StatusOr<PullResult>> ShardedClient::Pull(
    const std::vector<uint64_t>& have_versions, const std::vector<bool>& which, absl::Duration wait,
    absl::Span<float> model) {
  std::vector<absl::StatusOr<PullResult>> pulled(shards_.size(), PullResult());
  ForEachShard([&](size_t i) {
    if (!which[i]) return;
    pulled[i] = shards_[i]->Pull(have_versions[i], wait,
                                 model.subspan(ranges_[i].begin, ranges_[i].size()));
  });
  return pulled;
}

absl::StatusOr<v1::StatusResponse> ShardedClient::Status() { return shards_[0]->Status(); }

ClientWireStats ShardedClient::wire() const {
  ClientWireStats sum;
  for (const auto& shard : shards_) {
    const ClientWireStats s = shard->wire();
    sum.bytes_sent += s.bytes_sent;
    sum.bytes_received += s.bytes_received;
    sum.payload_bytes_sent += s.payload_bytes_sent;
    sum.payload_bytes_received += s.payload_bytes_received;
    sum.raw_bytes_sent += s.raw_bytes_sent;
    sum.raw_bytes_received += s.raw_bytes_received;
    sum.upload_bytes_sent += s.upload_bytes_sent;
  }
  return sum;
}

}  // namespace ps
