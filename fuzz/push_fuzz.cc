// libFuzzer target for everything the server parses from a client's Push: the chunk stream
// (headers, offsets, sizes) through PushAssembly, then the payload through the decoders, exactly
// as the service and the aggregator use them. A second mode feeds the decoders directly, with the
// encoding parameters taken from the input, so that the fuzzer reaches them without first having
// to guess a consistent header.
//
// Input, mode byte first:
//   0: records of [u16 length][serialized ps.v1.UpdateChunk], one per chunk, in order
//   1: [encoding][bits][u16 bucket][scaling][u16 elements] then the payload
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/codec.h"
#include "server/push_assembly.h"

namespace {

constexpr uint64_t kShard = 1000;

uint16_t ReadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

void Decoders(const ps::v1::EncodingParams& params, absl::string_view payload, uint64_t n) {
  // The server's sync path (validate while accumulating in double), its async path (validate,
  // then the unchecked decoder), and the worker's pull path (decode into floats).
  std::vector<double> sum(n);
  (void)ps::DecodeAccumulate(params, payload, 0.5, absl::MakeSpan(sum));
  std::vector<float> model(n);
  if (ps::ValidatePayload(params, payload, n).ok()) {
    ps::DecodeAccumulateValidated(params, payload, 0.25f, absl::MakeSpan(model));
  }
  (void)ps::Decode(params, payload, absl::MakeSpan(model));
}

void PushStream(const uint8_t* data, size_t size) {
  static const ps::PushRules* rules = [] {
    auto* r = new ps::PushRules;
    r->model_size = 3 * kShard;
    r->shard_begin = kShard;
    r->shard_end = 2 * kShard;
    r->max_chunk_bytes = 1024;
    r->allowed_encodings = {ps::v1::ENCODING_FP32, ps::v1::ENCODING_QSGD, ps::v1::ENCODING_SIGN};
    return r;
  }();
  ps::PushAssembly assembly([](const ps::v1::UpdateHeader&) { return *rules; });
  ps::v1::UpdateChunk chunk;
  while (size >= 2) {
    const size_t length = ReadU16(data);
    data += 2;
    size -= 2;
    if (length > size) return;
    if (!chunk.ParseFromArray(data, static_cast<int>(length))) return;
    data += length;
    size -= length;
    if (!assembly.Add(chunk).ok()) return;
  }
  if (!assembly.Finish().ok()) return;
  Decoders(assembly.header().encoding(), assembly.payload(), assembly.header().num_elements());
}

void DirectDecode(const uint8_t* data, size_t size) {
  if (size < 7) return;
  ps::v1::EncodingParams params;
  params.set_encoding(static_cast<ps::v1::Encoding>(data[0] % 5));
  params.set_bits(data[1]);
  params.set_bucket_size(ReadU16(data + 2));
  params.set_scaling(static_cast<ps::v1::QuantScaling>(data[4] % 4));
  const uint64_t n = ReadU16(data + 5) % 4096;
  Decoders(params, absl::string_view(reinterpret_cast<const char*>(data + 7), size - 7), n);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    PushStream(data + 1, size - 1);
  } else {
    DirectDecode(data + 1, size - 1);
  }
  return 0;
}
