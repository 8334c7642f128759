// Reading small files (certificates, keys, token lists) whole, with errors that name the file.
#ifndef PS_COMMON_FILES_H_
#define PS_COMMON_FILES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ps {

// NOT_FOUND if it cannot be opened; INVALID_ARGUMENT if it is larger than max_bytes.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes = 1 << 20);

}  // namespace ps

#endif  // PS_COMMON_FILES_H_
