// Writes the seed corpus of push_fuzz into the folder given: well-formed pushes in every encoding
// (the fuzzer mutates from there), and direct decoder inputs. Run by hand; its output is committed
// as fuzz/corpus/.
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/chunking.h"
#include "common/codec.h"

namespace {

void Write(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string U16(size_t v) {
  return std::string{static_cast<char>(v & 255), static_cast<char>(v >> 8)};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> values(1000);
  for (float& v : values) v = normal(rng) * 0.01f;
  int count = 0;
  for (int variant = 0; variant < 5; ++variant) {
    ps::v1::EncodingParams params;
    switch (variant) {
      case 0:
        params.set_encoding(ps::v1::ENCODING_FP32);
        break;
      case 1:
      case 2:
      case 3:
        params.set_encoding(ps::v1::ENCODING_QSGD);
        params.set_bits(variant == 1 ? 2 : variant == 2 ? 4 : 8);
        params.set_bucket_size(128);
        params.set_scaling(variant == 3 ? ps::v1::QUANT_SCALING_L2 : ps::v1::QUANT_SCALING_MAX_ABS);
        params.set_seed(42);
        break;
      default:
        params.set_encoding(ps::v1::ENCODING_SIGN);
        params.set_bucket_size(128);
    }
    const std::string payload = ps::Encode(params, values).value();
    // Mode 0: the push as chunks of at most 1024 bytes.
    std::string push(1, '\0');
    ps::v1::UpdateHeader header;
    header.set_worker_id(1);
    header.set_sequence(1);
    header.set_kind(ps::v1::UPDATE_KIND_MODEL_DELTA);
    header.set_base_version(1);
    header.set_sample_count(32);
    *header.mutable_encoding() = params;
    header.set_num_elements(values.size());
    header.set_payload_bytes(payload.size());
    bool first = true;
    for (const ps::ByteRange& r : ps::ChunkRanges(payload.size(), 1024)) {
      ps::v1::UpdateChunk chunk;
      if (first) *chunk.mutable_header() = header;
      first = false;
      chunk.set_offset(r.offset);
      chunk.set_data(payload.substr(r.offset, r.size));
      const std::string bytes = chunk.SerializeAsString();
      push += U16(bytes.size()) + bytes;
    }
    Write(dir + "/push-" + std::to_string(variant), push);
    // Mode 1: the decoders directly.
    std::string direct(1, '\1');
    direct += static_cast<char>(params.encoding());
    direct += static_cast<char>(params.bits());
    direct += U16(params.bucket_size());
    direct += static_cast<char>(params.scaling());
    direct += U16(values.size());
    Write(dir + "/decode-" + std::to_string(variant), direct + payload);
    count += 2;
  }
  std::printf("wrote %d seeds to %s\n", count, dir.c_str());
  return 0;
}
