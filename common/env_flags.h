// Containers configure processes through environment variables; our binaries take flags. The
// mains (never the libraries) turn PS_<FLAG NAME IN CAPITALS>=value into --<flag name>=value for
// every flag the binary defines, before the command line, so that the command line wins.
#ifndef PS_COMMON_ENV_FLAGS_H_
#define PS_COMMON_ENV_FLAGS_H_

#include <map>
#include <string>
#include <vector>

namespace ps {

// `argv` with --flag=value inserted after argv[0] for every variable in `environment`
// ("NAME=value" strings) named PS_<NAME> where <name> in lower case is in `known_flags`, and for
// every alias (another variable name mapped to a flag, e.g. JOB_COMPLETION_INDEX -> rank) that is
// set. An explicit PS_ variable beats an alias.
std::vector<std::string> ArgsWithEnvironment(
    const std::vector<std::string>& argv, const std::vector<std::string>& environment,
    const std::vector<std::string>& known_flags,
    const std::map<std::string, std::string>& aliases = {});

// The flags the running binary defines (absl's registry).
std::vector<std::string> DefinedFlagNames();
// main()'s envp as strings.
std::vector<std::string> Strings(char** null_terminated);

}  // namespace ps

#endif  // PS_COMMON_ENV_FLAGS_H_
