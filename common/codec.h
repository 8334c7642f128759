// Tensor codecs: how a float vector becomes the bytes of a Push or Pull payload and back.
//
// Decoders check the exact payload size and every parameter before reading a byte, and check every
// decoded value before changing the output: on any error the output is untouched.
// All functions are thread-safe (they keep no state).
#ifndef PS_COMMON_CODEC_H_
#define PS_COMMON_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ps/v1/ps.pb.h"

namespace ps {

// The wire format is little-endian; so is every machine we build for.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ps assumes a little-endian host");

// A readable name, e.g. "FP32" or "QSGD(bits=4)", for messages and logs.
std::string EncodingName(const v1::EncodingParams& params);

// Parses "fp32" etc. (as given on the command line).
absl::StatusOr<v1::Encoding> ParseEncoding(absl::string_view name);

// INVALID_ARGUMENT if this build cannot encode or decode `params`, naming the field at fault.
absl::Status ValidateEncodingParams(const v1::EncodingParams& params);

// The exact byte size of an encoded payload of `num_elements` coordinates.
absl::StatusOr<uint64_t> EncodedSize(const v1::EncodingParams& params, uint64_t num_elements);

// Encodes `values`. INVALID_ARGUMENT on NaN or Inf, naming the first bad index.
absl::StatusOr<std::string> Encode(const v1::EncodingParams& params,
                                   absl::Span<const float> values);

// OK iff `payload` is a well-formed encoding of `num_elements` finite values: the exact size, valid
// parameters, no NaN or Inf. The decoders below run this first. When OK and `max_abs` is given, it
// gets a bound on |decode(payload)[i]| found in the same pass: the largest bucket scale for QSGD
// and SIGN, the largest |value| for FP32.
absl::Status ValidatePayload(const v1::EncodingParams& params, absl::string_view payload,
                             uint64_t num_elements, double* max_abs = nullptr);

// Encode into `out`, reusing its capacity.
absl::Status EncodeInto(const v1::EncodingParams& params, absl::Span<const float> values,
                        std::string* out);

// out[i] += weight * decode(payload)[i]. The payload size must equal EncodedSize(params,
// out.size()) and every decoded value must be finite, else INVALID_ARGUMENT and `out` is unchanged.
absl::Status DecodeAccumulate(const v1::EncodingParams& params, absl::string_view payload,
                              float weight, absl::Span<float> out);

// The same into a double accumulator: a sum of sample-weighted updates stays exact enough that a
// one-worker round reproduces its update bit for bit.
absl::Status DecodeAccumulate(const v1::EncodingParams& params, absl::string_view payload,
                              double weight, absl::Span<double> out);

// DecodeAccumulate without the checks, for a payload that already passed ValidatePayload (so an
// update can be validated before a version is spent on it, and decoded once after). Returns the
// largest |out[i]| afterwards, computed in the same pass: +Inf or NaN when a sum overflowed.
// REQUIRES: ValidatePayload(params, payload, out.size()).ok()
float DecodeAccumulateValidated(const v1::EncodingParams& params, absl::string_view payload,
                                float weight, absl::Span<float> out);

// The largest |value| a model coordinate may take: half of float's range, so that a difference or
// an average of two coordinates never overflows. Updates that would go past it are refused.
inline constexpr float kMaxModelMagnitude = 1.7e38f;

// INVALID_ARGUMENT naming the first coordinate i where |base[i] + step * decode(payload)[i]|
// (in double) exceeds kMaxModelMagnitude. REQUIRES: ValidatePayload(params, payload,
// base.size()).ok()
absl::Status CheckStaysInRange(const v1::EncodingParams& params, absl::string_view payload,
                               double step, absl::Span<const float> base);

// The same into a double accumulator (a sync round's sum).
void DecodeAccumulateValidated(const v1::EncodingParams& params, absl::string_view payload,
                               double weight, absl::Span<double> out);

// DecodeAccumulateValidated of the coordinates [first, first + out.size()) of a payload of `total`
// coordinates, into `out` (which holds just those): a model can be decoded in disjoint ranges on
// several threads. Returns the largest |out[i]| afterwards.
// REQUIRES: ValidatePayload(params, payload, total).ok(), first + out.size() <= total, and
// first a multiple of RangeAlignment(params).
float DecodeAccumulateRange(const v1::EncodingParams& params, absl::string_view payload,
                            float weight, uint64_t total, uint64_t first, absl::Span<float> out);
void DecodeAccumulateRange(const v1::EncodingParams& params, absl::string_view payload,
                           double weight, uint64_t total, uint64_t first, absl::Span<double> out);
// Where a range may start: the bucket size for QSGD and SIGN, 1 for the others.
uint64_t RangeAlignment(const v1::EncodingParams& params);

// The largest |values[i]| (+Inf or NaN if one is not finite).
float MaxAbs(absl::Span<const float> values);

// out[i] = decode(payload)[i], with the same checks as DecodeAccumulate.
absl::Status Decode(const v1::EncodingParams& params, absl::string_view payload,
                    absl::Span<float> out);

}  // namespace ps

#endif  // PS_COMMON_CODEC_H_
