#include "app/shard_index.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ps {

absl::StatusOr<int> OrdinalOfPodName(absl::string_view pod_name) {
  const size_t dash = pod_name.rfind('-');
  const absl::string_view digits =
      dash == absl::string_view::npos ? absl::string_view() : pod_name.substr(dash + 1);
  int ordinal = -1;
  // Digits only: SimpleAtoi alone would also take "+1" or " 1".
  if (digits.empty() ||
      !std::all_of(digits.begin(), digits.end(),
                   [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); }) ||
      !absl::SimpleAtoi(digits, &ordinal)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pod name \"", pod_name, "\" does not end in -<ordinal>, as a StatefulSet pod's does"));
  }
  return ordinal;
}

absl::StatusOr<int> ShardIndexFromFlag(absl::string_view flag_value, const char* pod_name) {
  if (!flag_value.empty()) {
    int index = -1;
    if (!absl::SimpleAtoi(flag_value, &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--shard_index must be an integer >= 0, or empty (the ordinal of "
                       "POD_NAME), got \"",
                       flag_value, "\""));
    }
    return index;
  }
  if (pod_name == nullptr || *pod_name == '\0') return 0;
  absl::StatusOr<int> ordinal = OrdinalOfPodName(pod_name);
  if (!ordinal.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--shard_index is empty, so it comes from POD_NAME, but ", ordinal.status().message()));
  }
  return ordinal;
}

}  // namespace ps
