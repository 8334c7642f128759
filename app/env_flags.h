// Containers configure processes through environment variables; our binaries take flags. The
// mains (never the libraries) turn PS_<FLAG NAME IN CAPITALS>=value into --<flag name>=value for
// every flag the binary defines, before the command line, so that the command line wins.
#ifndef PS_APP_ENV_FLAGS_H_
#define PS_APP_ENV_FLAGS_H_

#include <map>
#include <string>
#include <vector>

namespace ps {

struct EnvironmentArgs {
  std::vector<std::string> args;
  // PS_ variables that name no flag of this binary (a typo, or meant for the other binary): the
  // mains warn about them rather than fail, since orchestrators add PS_ variables of their own
  // (Kubernetes service links for a Service named ps-server: PS_SERVER_SERVICE_HOST, ...).
  std::vector<std::string> unknown_variables;
};

// `argv` with --flag=value inserted after argv[0] for every variable in `environment`
// ("NAME=value" strings) named PS_<NAME> where <name> in lower case is in `known_flags`, and for
// every alias (another variable name mapped to a flag, e.g. JOB_COMPLETION_INDEX -> rank) that is
// set. An explicit PS_ variable beats an alias.
EnvironmentArgs ArgsWithEnvironment(const std::vector<std::string>& argv,
                                    const std::vector<std::string>& environment,
                                    const std::vector<std::string>& known_flags,
                                    const std::map<std::string, std::string>& aliases = {});

// What a main calls instead of absl::ParseCommandLine: parses argv with envp's PS_ variables (and
// `aliases`) as flags, as above, and logs a warning naming each PS_ variable that is no flag.
void ParseCommandLineWithEnvironment(int argc, char** argv, char** envp,
                                     const std::map<std::string, std::string>& aliases = {});

}  // namespace ps

#endif  // PS_APP_ENV_FLAGS_H_
