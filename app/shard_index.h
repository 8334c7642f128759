// ps-server's --shard_index when it runs as a Kubernetes StatefulSet pod. The manifests pass the
// pod-index label (apps.kubernetes.io/pod-index) as PS_SHARD_INDEX, but that label exists only
// from Kubernetes 1.28; before, the kubelet passes an empty value. A StatefulSet has always named
// its pods <name>-<ordinal>, so an empty --shard_index falls back to the ordinal of POD_NAME (the
// pod's name, from the downward API).
#ifndef PS_APP_SHARD_INDEX_H_
#define PS_APP_SHARD_INDEX_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ps {

// N of a StatefulSet pod's name "<name>-N"; INVALID_ARGUMENT for a name that does not end in
// "-" and decimal digits.
absl::StatusOr<int> OrdinalOfPodName(absl::string_view pod_name);

// The shard index --shard_index=`flag_value` gives: the integer (>= 0) it holds, or, if it is
// empty, the ordinal of `pod_name` (the POD_NAME variable), or 0 if POD_NAME is unset or empty
// (nullptr or ""). INVALID_ARGUMENT for anything else, naming the flag and the variable.
absl::StatusOr<int> ShardIndexFromFlag(absl::string_view flag_value, const char* pod_name);

}  // namespace ps

#endif  // PS_APP_SHARD_INDEX_H_
