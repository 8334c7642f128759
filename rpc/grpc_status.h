// The one place where absl::Status and grpc::Status are converted. Both use the same canonical
// codes.
#ifndef PS_RPC_GRPC_STATUS_H_
#define PS_RPC_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ps {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace ps

#endif  // PS_RPC_GRPC_STATUS_H_
