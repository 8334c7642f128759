#include "common/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

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

constexpr uint32_t kMaxBucketSize = 1u << 20;

uint64_t Buckets(uint64_t n, uint32_t bucket) { return (n + bucket - 1) / bucket; }

// QSGD levels for b bits: one sign bit, b - 1 level bits.
uint32_t Levels(uint32_t bits) { return (1u << (bits - 1)) - 1; }

// Appends codes of `bits` bits, least significant bit first, to a byte buffer.
class BitWriter {
 public:
  explicit BitWriter(char* out) : out_(out) {}
  void Put(uint32_t code, uint32_t bits) {
    acc_ |= static_cast<uint64_t>(code) << used_;
    used_ += bits;
    if (used_ >= 32) {
      const uint32_t word = static_cast<uint32_t>(acc_);
      std::memcpy(out_, &word, 4);
      out_ += 4;
      acc_ >>= 32;
      used_ -= 32;
    }
  }
  void Flush() {
    for (; used_ > 0; used_ = used_ > 8 ? used_ - 8 : 0) {
      *out_++ = static_cast<char>(acc_ & 0xff);
      acc_ >>= 8;
    }
  }

 private:
  char* out_;
  uint64_t acc_ = 0;
  uint32_t used_ = 0;
};

// The code of coordinate i in a stream of `bits`-bit codes. Reads the second byte only when the
// code spans it, so it never reads past the last byte of an exactly sized stream.
inline uint32_t CodeAt(const unsigned char* codes, uint64_t i, uint32_t bits, uint32_t mask) {
  const uint64_t bit = i * bits;
  const uint64_t byte = bit >> 3;
  const uint32_t shift = static_cast<uint32_t>(bit & 7);
  uint32_t word = codes[byte];
  if (shift + bits > 8) word |= static_cast<uint32_t>(codes[byte + 1]) << 8;
  return (word >> shift) & mask;
}

float LoadScale(const char* payload, uint64_t j) { return LoadFloat(payload + j * sizeof(float)); }

// |x| as its bit pattern: for non-negative floats the integer order is the value order, with +Inf
// above every finite value and NaN above +Inf, so an integer max (which vectorises) finds the
// largest magnitude and tells a non-finite one.
inline uint32_t AbsBits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits & 0x7fffffffu;
}

float FromAbsBits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// The largest |value| of an fp32 payload, and the index of its first non-finite value or -1.
double Fp32MaxAbs(absl::string_view payload, int64_t* first_non_finite) {
  const int64_t n = static_cast<int64_t>(payload.size() / sizeof(float));
  uint32_t max_abs_bits = 0;
  for (int64_t i = 0; i < n; ++i) {
    max_abs_bits = std::max(max_abs_bits, AbsBits(LoadFloat(payload.data() + i * sizeof(float))));
  }
  *first_non_finite = -1;
  if (max_abs_bits >= 0x7f800000u) {  // rare: find which one, for the message
    for (int64_t i = 0; i < n && *first_non_finite < 0; ++i) {
      if (!std::isfinite(LoadFloat(payload.data() + i * sizeof(float)))) *first_non_finite = i;
    }
  }
  return FromAbsBits(max_abs_bits);
}

// 16-bit floats (FP16, BF16): round to nearest even on encoding, exact on decoding.
bool Is16Bit(const v1::EncodingParams& params) {
  return params.encoding() == v1::ENCODING_FP16 || params.encoding() == v1::ENCODING_BF16;
}

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE half, round to nearest even; overflow gives infinity (0x7c00), which the encoder refuses.
uint16_t FloatToHalf(float f) {
  uint32_t u = FloatBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  uint32_t h;
  if (u >= 0x47800000u) {  // >= 65536 (or not finite): infinity
    h = 0x7c00u;
  } else if (u < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    // Adding 0.5 aligns the value's bits so that the float addition itself rounds to nearest
    // even at the half's last subnormal bit.
    h = FloatBits(BitsFloat(u) + 0.5f) - 0x3f000000u;
  } else {
    const uint32_t odd = (u >> 13) & 1u;
    u += 0xc8000fffu + odd;  // rebias the exponent (-112 << 23) and round to nearest even
    h = u >> 13;
  }
  return static_cast<uint16_t>(h | sign);
}

// Every half as a float, built once: decoding is one lookup.
const float* HalfTable() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) {
      const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
      float v;
      if (exp == 0) {
        v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
      } else if (exp == 31) {
        v = BitsFloat(0x7f800000u | (mant << 13));
      } else {
        v = BitsFloat(((exp + 112) << 23) | (mant << 13));
      }
      t[h] = BitsFloat(FloatBits(v) | sign);
    }
    return t;
  }();
  return table;
}

uint16_t FloatToBf16(float f) {
  const uint32_t u = FloatBits(f);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

uint16_t Load16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float Decode16(bool bf16, uint16_t v) {
  return bf16 ? BitsFloat(static_cast<uint32_t>(v) << 16) : HalfTable()[v];
}

// Finite unless the exponent bits are all set.
uint16_t ExponentMask(bool bf16) { return bf16 ? 0x7f80u : 0x7c00u; }

absl::Status Validate16(const v1::EncodingParams& params, absl::string_view payload,
                        double* max_abs) {
  const bool bf16 = params.encoding() == v1::ENCODING_BF16;
  const uint16_t mask = ExponentMask(bf16);
  const size_t n = payload.size() / 2;
  uint16_t largest = 0;  // |value| orders as its bits without the sign, for both formats
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t v = Load16(payload.data() + 2 * i);
    finite &= (v & mask) != mask;
    largest = std::max<uint16_t>(largest, v & 0x7fffu);
  }
  if (!finite) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t v = Load16(payload.data() + 2 * i);
      if ((v & mask) == mask) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s payload value %d (0x%04x) is NaN or Inf: refused", EncodingName(params), i, v));
      }
    }
  }
  if (max_abs != nullptr) *max_abs = Decode16(bf16, largest);
  return absl::OkStatus();
}

absl::Status Encode16(const v1::EncodingParams& params, absl::Span<const float> values, char* out) {
  const bool bf16 = params.encoding() == v1::ENCODING_BF16;
  const uint16_t mask = ExponentMask(bf16);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t v = bf16 ? FloatToBf16(values[i]) : FloatToHalf(values[i]);
    if ((v & mask) == mask) {
      return absl::InvalidArgumentError(
          absl::StrFormat("value %d is %g, outside %s's range (largest %g); use %s", i, values[i],
                          EncodingName(params), bf16 ? 3.3895313892515355e38 : 65504.0,
                          bf16 ? "FP32" : "BF16 or FP32"));
    }
    std::memcpy(out + 2 * i, &v, sizeof v);
  }
  return absl::OkStatus();
}

// Decoders write out[i] += weight * decode(payload)[first + i]: `out` covers coordinates
// [first, first + out.size()) of a payload of `total` coordinates (the whole model, or a range of
// it decoded on one thread of a parallel apply).
template <typename T>
void DecodeAccumulate16(const v1::EncodingParams& params, absl::string_view payload, T weight,
                        uint64_t first, absl::Span<T> out, uint32_t* max_abs_bits = nullptr) {
  const bool bf16 = params.encoding() == v1::ENCODING_BF16;
  const char* p = payload.data() + 2 * first;
  if (bf16) {
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] += weight * static_cast<T>(BitsFloat(static_cast<uint32_t>(Load16(p + 2 * i)) << 16));
    }
  } else {
    const float* table = HalfTable();
    for (size_t i = 0; i < out.size(); ++i)
      out[i] += weight * static_cast<T>(table[Load16(p + 2 * i)]);
  }
  if constexpr (std::is_same_v<T, float>) {
    if (max_abs_bits != nullptr) {
      uint32_t m = 0;
      for (float v : out) m = std::max(m, AbsBits(v));
      *max_abs_bits = m;
    }
  }
}

}  // namespace

absl::Status ValidatePayload(const v1::EncodingParams& params, absl::string_view payload,
                             uint64_t num_elements, double* max_abs) {
  auto expected = EncodedSize(params, num_elements);
  if (!expected.ok()) return expected.status();
  if (payload.size() != *expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s payload of %d elements must have %d bytes, got %d",
                        EncodingName(params), num_elements, *expected, payload.size()));
  }
  if (Is16Bit(params)) return Validate16(params, payload, max_abs);
  if (params.encoding() == v1::ENCODING_FP32) {
    int64_t bad;
    const double m = Fp32MaxAbs(payload, &bad);
    if (bad >= 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("payload value %d is %f: NaN and Inf are refused", bad,
                          LoadFloat(payload.data() + bad * sizeof(float))));
    }
    if (max_abs != nullptr) *max_abs = m;
    return absl::OkStatus();
  }
  // QSGD and SIGN: every decoded value is code * scale with |code| <= 1 in scale units, so finite,
  // non-negative scales are all there is to check.
  // A decoded value is at most its bucket's scale in magnitude (QSGD: level <= levels).
  const uint64_t buckets = Buckets(num_elements, params.bucket_size());
  double largest = 0.0;
  for (uint64_t j = 0; j < buckets; ++j) {
    const float m = LoadScale(payload.data(), j);
    if (!std::isfinite(m) || m < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s payload: bucket %d has scale %f; scales must be finite and >= 0",
                          EncodingName(params), j, m));
    }
    largest = std::max<double>(largest, m);
  }
  if (max_abs != nullptr) *max_abs = largest;
  return absl::OkStatus();
}

namespace {

// A counter-based hash (lowbias32): the random bits of coordinate i depend only on the message
// seed and i, so the loop below has no serial dependency and vectorises.
inline uint32_t Hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Stochastic rounding of one bucket to codes (level | sign bit), one byte per coordinate.
// `to_levels` = s / m. Built for AVX2 too where the CPU has it (chosen at load time).
// target_clones picks the AVX2 build at load time through an ifunc resolver, which the dynamic
// loader runs before ThreadSanitizer's runtime is up: under TSan (tests only) there is one build.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PS_AVX2_CLONES
#endif
#endif
#ifndef PS_AVX2_CLONES
#define PS_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#endif

PS_AVX2_CLONES void QuantizeBucket(const float* v, uint32_t n, float to_levels, uint32_t levels,
                                   uint32_t sign_bit, uint32_t seed, uint32_t first_index,
                                   uint8_t* codes) {
  for (uint32_t i = 0; i < n; ++i) {
    const float u =
        static_cast<float>(Hash32(seed + (first_index + i) * 0x9E3779B9U) >> 8) * 0x1p-24f;
    const float r = std::abs(v[i]) * to_levels;
    uint32_t q = static_cast<uint32_t>(r);
    q += u < r - static_cast<float>(q) ? 1 : 0;
    q = q < levels ? q : levels;  // the rounded L2 norm may sit a hair below |v|
    codes[i] = static_cast<uint8_t>(q | (v[i] < 0.0f && q > 0 ? sign_bit : 0));
  }
}

// Packs one-byte codes of `bits` bits into the stream at bit offset first * bits.
void PackCodes(const uint8_t* codes, uint64_t first, uint64_t count, uint32_t bits, char* stream) {
  auto* out = reinterpret_cast<unsigned char*>(stream);
  if (bits == 8) {
    std::memcpy(out + first, codes, count);
    return;
  }
  uint64_t i = 0;
  if (bits == 4 && first % 2 == 0) {  // whole bytes: two codes each
    for (; i + 1 < count; i += 2) out[(first + i) / 2] = codes[i] | (codes[i + 1] << 4);
  } else if (bits == 2 && first % 4 == 0) {
    for (; i + 3 < count; i += 4) {
      out[(first + i) / 4] =
          codes[i] | (codes[i + 1] << 2) | (codes[i + 2] << 4) | (codes[i + 3] << 6);
    }
  }
  for (; i < count; ++i) {  // the general case, and the tail of the fast ones
    const uint64_t bit = (first + i) * bits;
    const uint32_t word = static_cast<uint32_t>(codes[i]) << (bit & 7);
    out[bit >> 3] |= static_cast<unsigned char>(word & 0xff);
    if ((bit & 7) + bits > 8) out[(bit >> 3) + 1] |= static_cast<unsigned char>(word >> 8);
  }
}

void EncodeQsgd(const v1::EncodingParams& params, absl::Span<const float> values, char* out) {
  const uint32_t bits = params.bits();
  const uint32_t bucket = params.bucket_size();
  const uint32_t levels = Levels(bits);
  const uint32_t sign_bit = 1u << (bits - 1);
  const uint64_t n = values.size();
  const uint64_t buckets = Buckets(n, bucket);
  char* stream = out + buckets * sizeof(float);
  std::memset(stream, 0, (n * bits + 7) / 8);  // PackCodes ORs bits in
  const uint32_t seed = Hash32(static_cast<uint32_t>(params.seed()) ^
                               Hash32(static_cast<uint32_t>(params.seed() >> 32)));
  std::vector<uint8_t> codes(std::min<uint64_t>(bucket, n));
  for (uint64_t j = 0; j < buckets; ++j) {
    const uint64_t begin = j * bucket;
    const uint32_t count = static_cast<uint32_t>(std::min<uint64_t>(bucket, n - begin));
    const float* v = values.data() + begin;
    float m = 0.0f;
    if (params.scaling() == v1::QUANT_SCALING_L2) {
      double sum = 0.0;
      for (uint32_t i = 0; i < count; ++i) sum += double{v[i]} * v[i];
      m = static_cast<float>(std::sqrt(sum));
    } else {
      for (uint32_t i = 0; i < count; ++i) m = std::max(m, std::abs(v[i]));
    }
    std::memcpy(out + j * sizeof(float), &m, sizeof m);
    if (m == 0.0f) continue;  // codes stay zero
    const double to_levels = static_cast<double>(levels) / m;
    if (to_levels <= 1e30) {
      QuantizeBucket(v, count, static_cast<float>(to_levels), levels, sign_bit, seed,
                     static_cast<uint32_t>(begin), codes.data());
    } else {
      // A tiny (denormal) scale: levels / m overflows float, so this rare bucket goes in double.
      for (uint32_t i = 0; i < count; ++i) {
        const float u =
            static_cast<float>(Hash32(seed + static_cast<uint32_t>(begin + i) * 0x9E3779B9U) >> 8) *
            0x1p-24f;
        const double r = std::abs(v[i]) * to_levels;
        uint32_t q = static_cast<uint32_t>(r);
        q += u < r - q ? 1 : 0;
        q = std::min(q, levels);
        codes[i] = static_cast<uint8_t>(q | (v[i] < 0.0f && q > 0 ? sign_bit : 0));
      }
    }
    PackCodes(codes.data(), begin, count, bits, stream);
  }
}

void EncodeSign(const v1::EncodingParams& params, absl::Span<const float> values, char* out) {
  const uint32_t bucket = params.bucket_size();
  const uint64_t n = values.size();
  const uint64_t buckets = Buckets(n, bucket);
  BitWriter codes(out + buckets * sizeof(float));
  for (uint64_t j = 0; j < buckets; ++j) {
    const uint64_t begin = j * bucket;
    const uint64_t end = std::min<uint64_t>(begin + bucket, n);
    double l1 = 0.0;
    for (uint64_t i = begin; i < end; ++i) l1 += std::abs(values[i]);
    const float m = static_cast<float>(l1 / static_cast<double>(end - begin));
    std::memcpy(out + j * sizeof(float), &m, sizeof m);
    for (uint64_t i = begin; i < end; ++i) codes.Put(values[i] < 0 ? 1 : 0, 1);
  }
  codes.Flush();
}

// out[i] += weight * decode(payload)[i], for a payload that passed ValidatePayload. QSGD and SIGN
// share it: SIGN is one bit per coordinate, code 1 = -scale, 0 = +scale.
// REQUIRES: `first` is a multiple of the bucket size.
template <typename T>
void DecodeAccumulateBucketed(const v1::EncodingParams& params, absl::string_view payload, T weight,
                              uint64_t total, uint64_t first, absl::Span<T> out,
                              uint32_t* max_abs_bits = nullptr) {
  const bool sign_only = params.encoding() == v1::ENCODING_SIGN;
  const uint32_t bits = sign_only ? 1 : params.bits();
  const uint32_t bucket = params.bucket_size();
  const uint32_t mask = (1u << bits) - 1;
  const uint32_t levels = sign_only ? 1 : Levels(bits);
  const uint32_t sign_bit = sign_only ? 1 : 1u << (bits - 1);
  const uint64_t last = first + out.size();
  const auto* codes = reinterpret_cast<const unsigned char*>(
      payload.data() + Buckets(total, bucket) * sizeof(float));
  T* const shifted = out.data() - first;  // shifted[i] is out[i - first]
  T table[256];
  for (uint64_t j = first / bucket; j * bucket < last; ++j) {
    const uint64_t begin = j * bucket;
    const uint64_t end = std::min<uint64_t>(begin + bucket, last);
    const double scale = LoadScale(payload.data(), j);
    // One table per bucket turns each coordinate into a lookup and an add. Built in double:
    // q * m / s is then exact at q = s (the bucket maximum) even for huge or denormal m.
    for (uint32_t code = 0; code <= mask; ++code) {
      const double magnitude = sign_only ? 1.0 : static_cast<double>(code & (sign_bit - 1));
      const double value = magnitude * scale / levels * static_cast<double>(weight);
      table[code] = static_cast<T>(code & sign_bit ? -value : value);
    }
    if constexpr (std::is_same_v<T, float>) {
      if (max_abs_bits != nullptr) {
        uint32_t m = *max_abs_bits;
        for (uint64_t i = begin; i < end; ++i) {
          shifted[i] += table[CodeAt(codes, i, bits, mask)];
          m = std::max(m, AbsBits(shifted[i]));
        }
        *max_abs_bits = m;
        continue;
      }
    }
    for (uint64_t i = begin; i < end; ++i) shifted[i] += table[CodeAt(codes, i, bits, mask)];
  }
}

template <typename T>
void DecodeAccumulateUnchecked(const v1::EncodingParams& params, absl::string_view payload,
                               T weight, uint64_t total, uint64_t first, absl::Span<T> out) {
  if (params.encoding() == v1::ENCODING_FP32) {
    const char* p = payload.data() + first * sizeof(float);
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] += weight * static_cast<T>(LoadFloat(p + i * sizeof(float)));
    }
  } else if (Is16Bit(params)) {
    DecodeAccumulate16(params, payload, weight, first, out);
  } else {
    DecodeAccumulateBucketed(params, payload, weight, total, first, out);
  }
}

template <typename T>
absl::Status DecodeAccumulateImpl(const v1::EncodingParams& params, absl::string_view payload,
                                  T weight, absl::Span<T> out) {
  if (absl::Status s = ValidatePayload(params, payload, out.size()); !s.ok()) return s;
  DecodeAccumulateUnchecked(params, payload, weight, out.size(), 0, out);
  return absl::OkStatus();
}

}  // namespace

std::string EncodingName(const v1::EncodingParams& params) {
  switch (params.encoding()) {
    case v1::ENCODING_FP32:
      return "FP32";
    case v1::ENCODING_FP16:
      return "FP16";
    case v1::ENCODING_BF16:
      return "BF16";
    case v1::ENCODING_SIGN:
      return absl::StrFormat("SIGN(bucket=%d)", params.bucket_size());
    case v1::ENCODING_QSGD:
      return absl::StrFormat("QSGD(bits=%d, bucket=%d)", params.bits(), params.bucket_size());
    default:
      return absl::StrCat("encoding #", static_cast<int>(params.encoding()));
  }
}

absl::StatusOr<v1::Encoding> ParseEncoding(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "fp32") return v1::ENCODING_FP32;
  if (lower == "qsgd") return v1::ENCODING_QSGD;
  if (lower == "sign") return v1::ENCODING_SIGN;
  if (lower == "fp16") return v1::ENCODING_FP16;
  if (lower == "bf16") return v1::ENCODING_BF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown encoding '", name, "'; choose fp32, fp16, bf16, qsgd or sign"));
}

absl::Status ValidateEncodingParams(const v1::EncodingParams& params) {
  auto check_bucket = [&params]() -> absl::Status {
    if (params.bucket_size() < 1 || params.bucket_size() > kMaxBucketSize) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: bucket_size must be in [1, %d]",
                                                        EncodingName(params), kMaxBucketSize));
    }
    return absl::OkStatus();
  };
  switch (params.encoding()) {
    case v1::ENCODING_FP32:
    case v1::ENCODING_FP16:
    case v1::ENCODING_BF16:
      return absl::OkStatus();
    case v1::ENCODING_QSGD:
      if (params.bits() < 2 || params.bits() > 8) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s: bits must be in [2, 8]", EncodingName(params)));
      }
      if (!v1::QuantScaling_IsValid(params.scaling())) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s: unknown scaling %d", EncodingName(params), static_cast<int>(params.scaling())));
      }
      return check_bucket();
    case v1::ENCODING_SIGN:
      return check_bucket();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("encoding ", EncodingName(params),
                       " is not supported (supported: FP32, FP16, BF16, QSGD, SIGN)"));
  }
}

absl::StatusOr<uint64_t> EncodedSize(const v1::EncodingParams& params, uint64_t num_elements) {
  if (absl::Status s = ValidateEncodingParams(params); !s.ok()) return s;
  switch (params.encoding()) {
    case v1::ENCODING_QSGD:
      return Buckets(num_elements, params.bucket_size()) * sizeof(float) +
             (num_elements * params.bits() + 7) / 8;
    case v1::ENCODING_SIGN:
      return Buckets(num_elements, params.bucket_size()) * sizeof(float) + (num_elements + 7) / 8;
    case v1::ENCODING_FP16:
    case v1::ENCODING_BF16:
      return num_elements * sizeof(uint16_t);
    default:
      return num_elements * sizeof(float);
  }
}

absl::StatusOr<std::string> Encode(const v1::EncodingParams& params,
                                   absl::Span<const float> values) {
  std::string out;
  if (absl::Status s = EncodeInto(params, values, &out); !s.ok()) return s;
  return out;
}

absl::Status EncodeInto(const v1::EncodingParams& params, absl::Span<const float> values,
                        std::string* out) {
  absl::StatusOr<uint64_t> size = EncodedSize(params, values.size());
  if (!size.ok()) return size.status();
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("value %d is %f: NaN and Inf cannot be encoded", i, values[i]));
    }
  }
  out->resize(*size);
  switch (params.encoding()) {
    case v1::ENCODING_QSGD:
      EncodeQsgd(params, values, out->data());
      break;
    case v1::ENCODING_SIGN:
      EncodeSign(params, values, out->data());
      break;
    case v1::ENCODING_FP16:
    case v1::ENCODING_BF16:
      return Encode16(params, values, out->data());
    default:
      if (!values.empty()) std::memcpy(out->data(), values.data(), out->size());
  }
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

float DecodeAccumulateValidated(const v1::EncodingParams& params, absl::string_view payload,
                                float weight, absl::Span<float> out) {
  return DecodeAccumulateRange(params, payload, weight, out.size(), 0, out);
}

void DecodeAccumulateValidated(const v1::EncodingParams& params, absl::string_view payload,
                               double weight, absl::Span<double> out) {
  DecodeAccumulateUnchecked(params, payload, weight, out.size(), 0, out);
}

float DecodeAccumulateRange(const v1::EncodingParams& params, absl::string_view payload,
                            float weight, uint64_t total, uint64_t first, absl::Span<float> out) {
  uint32_t max_abs_bits = 0;
  if (params.encoding() == v1::ENCODING_FP32) {
    const char* p = payload.data() + first * sizeof(float);
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] += weight * LoadFloat(p + i * sizeof(float));
      max_abs_bits = std::max(max_abs_bits, AbsBits(out[i]));
    }
  } else if (Is16Bit(params)) {
    DecodeAccumulate16(params, payload, weight, first, out, &max_abs_bits);
  } else {
    DecodeAccumulateBucketed(params, payload, weight, total, first, out, &max_abs_bits);
  }
  return FromAbsBits(max_abs_bits);
}

void DecodeAccumulateRange(const v1::EncodingParams& params, absl::string_view payload,
                           double weight, uint64_t total, uint64_t first, absl::Span<double> out) {
  DecodeAccumulateUnchecked(params, payload, weight, total, first, out);
}

uint64_t RangeAlignment(const v1::EncodingParams& params) {
  const v1::Encoding e = params.encoding();
  return e == v1::ENCODING_QSGD || e == v1::ENCODING_SIGN ? std::max(params.bucket_size(), 1u) : 1;
}

float MaxAbs(absl::Span<const float> values) {
  uint32_t max_abs_bits = 0;
  for (float v : values) max_abs_bits = std::max(max_abs_bits, AbsBits(v));
  return FromAbsBits(max_abs_bits);
}

absl::Status CheckStaysInRange(const v1::EncodingParams& params, absl::string_view payload,
                               double step, absl::Span<const float> base) {
  // The rare path (an update near float's range): decode in double, then compare.
  std::vector<double> decoded(base.size(), 0.0);
  DecodeAccumulateUnchecked(params, payload, step, base.size(), 0, absl::MakeSpan(decoded));
  for (size_t i = 0; i < base.size(); ++i) {
    const double after = base[i] + decoded[i];
    if (!(std::abs(after) <= kMaxModelMagnitude)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "applying this update would take model coordinate %d from %g to %g, past the largest "
          "magnitude a coordinate may have (%g); nothing was applied",
          i, base[i], after, kMaxModelMagnitude));
    }
  }
  return absl::OkStatus();
}

absl::Status Decode(const v1::EncodingParams& params, absl::string_view payload,
                    absl::Span<float> out) {
  if (absl::Status s = ValidatePayload(params, payload, out.size()); !s.ok()) return s;
  if (params.encoding() == v1::ENCODING_FP32) {
    if (!out.empty()) std::memcpy(out.data(), payload.data(), payload.size());  // keeps -0.0
  } else if (Is16Bit(params)) {
    const bool bf16 = params.encoding() == v1::ENCODING_BF16;
    for (size_t i = 0; i < out.size(); ++i) out[i] = Decode16(bf16, Load16(payload.data() + 2 * i));
  } else {
    std::fill(out.begin(), out.end(), 0.0f);
    DecodeAccumulateBucketed(params, payload, 1.0f, out.size(), 0, out);
  }
  return absl::OkStatus();
}

}  // namespace ps
