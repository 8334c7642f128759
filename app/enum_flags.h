// The mains' enum flags (--mode=sync, --lr_schedule=cosine, ...) as typed absl flags: declare
// ABSL_FLAG(ps::v1::AggregationMode, mode, ...) and the flags library parses the value with
// these functions (found by argument-dependent lookup in the enums' namespace), refusing an
// unknown one with the list of choices before main runs, and --help shows the names.
#ifndef PS_APP_ENUM_FLAGS_H_
#define PS_APP_ENUM_FLAGS_H_

#include <string>

#include "absl/strings/string_view.h"
#include "ps/v1/ps.pb.h"

namespace ps::v1 {

// sync, async
bool AbslParseFlag(absl::string_view text, AggregationMode* out, std::string* error);
std::string AbslUnparseFlag(AggregationMode value);
// delta, gradient
bool AbslParseFlag(absl::string_view text, UpdateKind* out, std::string* error);
std::string AbslUnparseFlag(UpdateKind value);
// constant, inverse_time, cosine
bool AbslParseFlag(absl::string_view text, LearningRateSchedule* out, std::string* error);
std::string AbslUnparseFlag(LearningRateSchedule value);
// iid, label_sorted
bool AbslParseFlag(absl::string_view text, Partition* out, std::string* error);
std::string AbslUnparseFlag(Partition value);
// max_abs, l2
bool AbslParseFlag(absl::string_view text, QuantScaling* out, std::string* error);
std::string AbslUnparseFlag(QuantScaling value);
// fixed, dqsgd
bool AbslParseFlag(absl::string_view text, BitsPolicy* out, std::string* error);
std::string AbslUnparseFlag(BitsPolicy value);
// drop, fold
bool AbslParseFlag(absl::string_view text, LatePolicy* out, std::string* error);
std::string AbslUnparseFlag(LatePolicy value);
// fp32, fp16, bf16, qsgd, sign (as ParseEncoding)
bool AbslParseFlag(absl::string_view text, Encoding* out, std::string* error);
std::string AbslUnparseFlag(Encoding value);

}  // namespace ps::v1

#endif  // PS_APP_ENUM_FLAGS_H_
