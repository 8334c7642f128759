#include "app/enum_flags.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec.h"

namespace ps::v1 {
namespace {

template <typename Enum>
using Choices = std::initializer_list<std::pair<const char*, Enum>>;

template <typename Enum>
bool Parse(absl::string_view text, Choices<Enum> choices, Enum* out, std::string* error) {
  std::string names;
  for (const auto& [name, value] : choices) {
    if (text == name) {
      *out = value;
      return true;
    }
    absl::StrAppend(&names, names.empty() ? "" : ", ", name);
  }
  *error = absl::StrCat("'", text, "' is not one of: ", names);
  return false;
}

template <typename Enum>
std::string Unparse(Enum value, Choices<Enum> choices) {
  for (const auto& [name, v] : choices) {
    if (v == value) return name;
  }
  return absl::StrCat(static_cast<int>(value));
}

const Choices<AggregationMode> kModes = {{"sync", AGGREGATION_MODE_SYNC},
                                         {"async", AGGREGATION_MODE_ASYNC}};
const Choices<UpdateKind> kKinds = {{"delta", UPDATE_KIND_MODEL_DELTA},
                                    {"gradient", UPDATE_KIND_GRADIENT}};
const Choices<LearningRateSchedule> kSchedules = {
    {"constant", LEARNING_RATE_SCHEDULE_CONSTANT},
    {"inverse_time", LEARNING_RATE_SCHEDULE_INVERSE_TIME},
    {"cosine", LEARNING_RATE_SCHEDULE_COSINE}};
const Choices<Partition> kPartitions = {{"iid", PARTITION_IID},
                                        {"label_sorted", PARTITION_LABEL_SORTED}};
const Choices<QuantScaling> kScalings = {{"max_abs", QUANT_SCALING_MAX_ABS},
                                         {"l2", QUANT_SCALING_L2}};
const Choices<BitsPolicy> kPolicies = {{"fixed", BITS_POLICY_FIXED}, {"dqsgd", BITS_POLICY_DQSGD}};
const Choices<LatePolicy> kLatePolicies = {{"drop", LATE_POLICY_DROP}, {"fold", LATE_POLICY_FOLD}};
const Choices<Encoding> kEncodings = {{"fp32", ENCODING_FP32},
                                      {"fp16", ENCODING_FP16},
                                      {"bf16", ENCODING_BF16},
                                      {"qsgd", ENCODING_QSGD},
                                      {"sign", ENCODING_SIGN}};

}  // namespace

#define PS_ENUM_FLAG(Enum, choices)                                           \
  bool AbslParseFlag(absl::string_view text, Enum* out, std::string* error) { \
    return Parse(text, choices, out, error);                                  \
  }                                                                           \
  std::string AbslUnparseFlag(Enum value) { return Unparse(value, choices); }

PS_ENUM_FLAG(AggregationMode, kModes)
PS_ENUM_FLAG(UpdateKind, kKinds)
PS_ENUM_FLAG(LearningRateSchedule, kSchedules)
PS_ENUM_FLAG(Partition, kPartitions)
PS_ENUM_FLAG(QuantScaling, kScalings)
PS_ENUM_FLAG(BitsPolicy, kPolicies)
PS_ENUM_FLAG(LatePolicy, kLatePolicies)

// Encodings are named as everywhere else (common/codec.h), in any case.
bool AbslParseFlag(absl::string_view text, Encoding* out, std::string* error) {
  absl::StatusOr<Encoding> encoding = ParseEncoding(text);
  if (!encoding.ok()) {
    *error = std::string(encoding.status().message());
    return false;
  }
  *out = *encoding;
  return true;
}
std::string AbslUnparseFlag(Encoding value) { return Unparse(value, kEncodings); }

#undef PS_ENUM_FLAG

}  // namespace ps::v1
