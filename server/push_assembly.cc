#include "server/push_assembly.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/codec.h"

namespace ps {

absl::Status CheckUpdateHeader(const PushRules& rules, const v1::UpdateHeader& header) {
  if (header.num_elements() != rules.shard_size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "update has %d elements, but this shard holds %d (model size %d, shard [%d, %d))",
        header.num_elements(), rules.shard_size(), rules.model_size, rules.shard_begin,
        rules.shard_end));
  }
  const auto& allowed = rules.allowed_encodings;
  if (std::find(allowed.begin(), allowed.end(), header.encoding().encoding()) == allowed.end()) {
    return absl::InvalidArgumentError(absl::StrCat("encoding ", EncodingName(header.encoding()),
                                                   " is not allowed by this server"));
  }
  absl::StatusOr<uint64_t> expected = EncodedSize(header.encoding(), header.num_elements());
  if (!expected.ok()) return expected.status();
  if (header.payload_bytes() != *expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "payload_bytes is %d, but %s of %d elements takes exactly %d bytes", header.payload_bytes(),
        EncodingName(header.encoding()), header.num_elements(), *expected));
  }
  return absl::OkStatus();
}

PushAssembly::PushAssembly(Admit admit) : admit_(std::move(admit)) {}

absl::Status PushAssembly::AdmitHeader(const v1::UpdateChunk& first) {
  if (!first.has_header()) {
    return absl::InvalidArgumentError("the first chunk of a push must carry the header");
  }
  absl::StatusOr<PushRules> rules = admit_(first.header());
  if (!rules.ok()) return rules.status();
  if (absl::Status s = CheckUpdateHeader(*rules, first.header()); !s.ok()) return s;
  header_ = first.header();
  rules_ = *std::move(rules);
  return absl::OkStatus();
}

absl::Status PushAssembly::Add(const v1::UpdateChunk& chunk) {
  if (!assembler_.has_value()) {
    if (!rules_.has_value()) {
      if (absl::Status s = AdmitHeader(chunk); !s.ok()) return s;
    }
    assembler_.emplace(header_.payload_bytes(), rules_->max_chunk_bytes, std::move(buffer_));
  } else if (chunk.has_header()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk at offset ", chunk.offset(), " carries a second header"));
  }
  return assembler_->Add(chunk.offset(), chunk.data());
}

absl::Status PushAssembly::Finish() const {
  if (!assembler_.has_value()) {
    return absl::InvalidArgumentError("push stream ended without any chunk");
  }
  return assembler_->CheckComplete();
}

absl::string_view PushAssembly::payload() const {
  return assembler_.has_value() ? absl::string_view(assembler_->payload()) : absl::string_view();
}

std::string PushAssembly::TakeBuffer() {
  return assembler_.has_value() ? assembler_->TakeBuffer() : std::move(buffer_);
}

}  // namespace ps
