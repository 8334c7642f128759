// One log line per event on stderr, with a UTC timestamp and a level. Thread-safe.
#ifndef PS_COMMON_LOGGING_H_
#define PS_COMMON_LOGGING_H_

#include "absl/strings/string_view.h"

namespace ps {

void LogInfo(absl::string_view message);
void LogWarning(absl::string_view message);
void LogError(absl::string_view message);

}  // namespace ps

#endif  // PS_COMMON_LOGGING_H_
