#include "common/codec.h"

#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ps {
namespace {

float LoadFloat(const char* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Index of the first non-finite value of an fp32 payload, or -1.
int64_t FirstNonFiniteFp32(absl::string_view payload) {
  const int64_t n = static_cast<int64_t>(payload.size() / sizeof(float));
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(LoadFloat(payload.data() + i * sizeof(float)))) return i;
  }
  return -1;
}

}  // namespace

absl::Status ValidatePayload(const v1::EncodingParams& params, absl::string_view payload,
                             uint64_t num_elements) {
  auto expected = EncodedSize(params, num_elements);
  if (!expected.ok()) return expected.status();
  if (payload.size() != *expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s payload of %d elements must have %d bytes, got %d",
                        EncodingName(params), num_elements, *expected, payload.size()));
  }
  const int64_t bad = FirstNonFiniteFp32(payload);
  if (bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("payload value %d is %f: NaN and Inf are refused", bad,
                        LoadFloat(payload.data() + bad * sizeof(float))));
  }
  return absl::OkStatus();
}

namespace {

template <typename T>
absl::Status DecodeAccumulateImpl(const v1::EncodingParams& params, absl::string_view payload,
                                  T weight, absl::Span<T> out) {
  if (absl::Status s = ValidatePayload(params, payload, out.size()); !s.ok()) return s;
  const char* p = payload.data();
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] += weight * static_cast<T>(LoadFloat(p + i * sizeof(float)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string EncodingName(const v1::EncodingParams& params) {
  switch (params.encoding()) {
    case v1::ENCODING_FP32:
      return "FP32";
    case v1::ENCODING_FP16:
      return "FP16";
    case v1::ENCODING_SIGN:
      return "SIGN";
    case v1::ENCODING_QSGD:
      return absl::StrFormat("QSGD(bits=%d, bucket=%d)", params.bits(), params.bucket_size());
    default:
      return absl::StrCat("encoding #", static_cast<int>(params.encoding()));
  }
}

absl::StatusOr<v1::Encoding> ParseEncoding(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "fp32") return v1::ENCODING_FP32;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown encoding '", name, "'; this build supports: fp32"));
}

absl::Status ValidateEncodingParams(const v1::EncodingParams& params) {
  switch (params.encoding()) {
    case v1::ENCODING_FP32:
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "encoding ", EncodingName(params), " is not supported by this build (supported: FP32)"));
  }
}

absl::StatusOr<uint64_t> EncodedSize(const v1::EncodingParams& params, uint64_t num_elements) {
  if (absl::Status s = ValidateEncodingParams(params); !s.ok()) return s;
  return num_elements * sizeof(float);
}

absl::StatusOr<std::string> Encode(const v1::EncodingParams& params,
                                   absl::Span<const float> values) {
  std::string out;
  if (absl::Status s = EncodeInto(params, values, &out); !s.ok()) return s;
  return out;
}

absl::Status EncodeInto(const v1::EncodingParams& params, absl::Span<const float> values,
                        std::string* out) {
  if (absl::Status s = ValidateEncodingParams(params); !s.ok()) return s;
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("value %d is %f: NaN and Inf cannot be encoded", i, values[i]));
    }
  }
  out->resize(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(out->data(), values.data(), out->size());
  return absl::OkStatus();
}

absl::Status DecodeAccumulate(const v1::EncodingParams& params, absl::string_view payload,
                              float weight, absl::Span<float> out) {
  return DecodeAccumulateImpl(params, payload, weight, out);
}

absl::Status DecodeAccumulate(const v1::EncodingParams& params, absl::string_view payload,
                              double weight, absl::Span<double> out) {
  return DecodeAccumulateImpl(params, payload, weight, out);
}

absl::Status Decode(const v1::EncodingParams& params, absl::string_view payload,
                    absl::Span<float> out) {
  if (absl::Status s = ValidatePayload(params, payload, out.size()); !s.ok()) return s;
  if (!out.empty()) std::memcpy(out.data(), payload.data(), payload.size());
  return absl::OkStatus();
}

}  // namespace ps
