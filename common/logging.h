// One log line per event on stderr, with a UTC timestamp and a level. Thread-safe.
#ifndef PS_COMMON_LOGGING_H_
#define PS_COMMON_LOGGING_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace ps {

void LogInfo(absl::string_view message);
void LogWarning(absl::string_view message);
void LogError(absl::string_view message);

// A client-supplied string made safe for a log line: at most `max_bytes` of it (the rest is
// counted, not written), with control characters, quotes, backslashes and bytes outside ASCII
// escaped (\n, \x00, \"), so that no client can split a line or forge one.
std::string LogSafe(absl::string_view text, size_t max_bytes = 128);

}  // namespace ps

#endif  // PS_COMMON_LOGGING_H_
