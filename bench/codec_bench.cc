// Codec throughput per core (Google Benchmark): encode and decode-accumulate for each bit width,
// in bytes of float input per second, next to a plain memory copy of the same floats measured in
// the same run. Run: build/bench/ps_codec_bench (or `make bench`).
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/codec.h"

namespace ps {
namespace {

constexpr size_t kFloats = 1 << 20;  // 4 MiB of input: beyond L2, like a real update

std::vector<float> Input() {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(kFloats);
  for (float& x : v) x = normal(rng);
  return v;
}

v1::EncodingParams Params(int bits) {
  v1::EncodingParams p;
  if (bits == 32) {
    p.set_encoding(v1::ENCODING_FP32);
  } else if (bits == 1) {
    p.set_encoding(v1::ENCODING_SIGN);
    p.set_bucket_size(512);
  } else {
    p.set_encoding(v1::ENCODING_QSGD);
    p.set_bits(bits);
    p.set_bucket_size(512);
    p.set_scaling(v1::QUANT_SCALING_MAX_ABS);
  }
  return p;
}

void BM_MemoryCopy(benchmark::State& state) {
  const std::vector<float> in = Input();
  std::vector<float> out(kFloats);
  for (auto _ : state) {
    std::memcpy(out.data(), in.data(), kFloats * sizeof(float));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kFloats * sizeof(float));
}
BENCHMARK(BM_MemoryCopy);

void BM_Encode(benchmark::State& state) {
  const std::vector<float> in = Input();
  v1::EncodingParams p = Params(static_cast<int>(state.range(0)));
  std::string out;
  uint64_t seed = 0;
  for (auto _ : state) {
    p.set_seed(++seed);
    if (!EncodeInto(p, in, &out).ok()) state.SkipWithError("encode failed");
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * kFloats * sizeof(float));
  state.counters["wire_bytes"] = static_cast<double>(out.size());
}
BENCHMARK(BM_Encode)->Arg(1)->DenseRange(2, 8)->Arg(32);

void BM_DecodeAccumulate(benchmark::State& state) {
  const std::vector<float> in = Input();
  const v1::EncodingParams p = Params(static_cast<int>(state.range(0)));
  const std::string payload = *Encode(p, in);
  std::vector<float> out(kFloats, 0.0f);
  for (auto _ : state) {
    if (!DecodeAccumulate(p, payload, 0.25f, absl::MakeSpan(out)).ok()) {
      state.SkipWithError("decode failed");
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * kFloats * sizeof(float));
}
BENCHMARK(BM_DecodeAccumulate)->Arg(1)->DenseRange(2, 8)->Arg(32);

}  // namespace
}  // namespace ps

BENCHMARK_MAIN();
