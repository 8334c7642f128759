// A tiny writer for flat JSON objects (run summaries). Not thread-safe.
#ifndef PS_COMMON_JSON_WRITER_H_
#define PS_COMMON_JSON_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace ps {

class JsonObject {
 public:
  JsonObject& Add(absl::string_view key, absl::string_view value);
  JsonObject& Add(absl::string_view key, const char* value) {
    return Add(key, absl::string_view(value));
  }
  JsonObject& Add(absl::string_view key, double value);
  JsonObject& Add(absl::string_view key, int64_t value);
  JsonObject& Add(absl::string_view key, uint64_t value);
  JsonObject& Add(absl::string_view key, int value) { return Add(key, int64_t{value}); }
  JsonObject& Add(absl::string_view key, uint32_t value) { return Add(key, uint64_t{value}); }
  JsonObject& Add(absl::string_view key, bool value);
  // Every singular scalar field of `message` (numbers, bools, strings; enums by value name)
  // under its proto field name, in field order, so that a summary follows its message as fields
  // are added. Sub-messages and repeated fields are left out, and so is a field whose name the
  // object holds already (what was added by hand first wins).
  JsonObject& AddFields(const google::protobuf::Message& message);
  bool Has(absl::string_view key) const;

  std::string ToString() const;
  // Writes ToString() and a newline to `path`, replacing it.
  absl::Status WriteToFile(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;  // key, encoded value
};

}  // namespace ps

#endif  // PS_COMMON_JSON_WRITER_H_
