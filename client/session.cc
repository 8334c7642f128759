#include "client/session.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "client/grpc_session.h"
#include "common/status_macros.h"

namespace ps {

absl::StatusOr<std::unique_ptr<Session>> Session::Connect(const SessionOptions& options) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<ShardedClient> client,
                      ShardedClient::Create(options.connection));
  return std::unique_ptr<Session>(new GrpcSession(options, std::move(client)));
}

absl::StatusOr<RoundResult> Session::Sync(absl::Span<float> params, const UpdateInfo& info) {
  const absl::Span<const float> global = model();
  if (params.size() != global.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("Sync: %d parameters given for a model of %d",
                                                      params.size(), global.size()));
  }
  delta_.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) delta_[i] = params[i] - global[i];
  PS_ASSIGN_OR_RETURN(RoundResult round, Push(delta_, info));
  const absl::Span<const float> next = model();
  std::copy(next.begin(), next.end(), params.begin());
  return round;
}

}  // namespace ps
