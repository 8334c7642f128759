#include "server/auth.h"

#include <grpcpp/security/auth_context.h>

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace ps {
namespace {

// Compares without an early exit, so that response time does not tell how much of a guess was
// right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

bool IsLoopbackAddress(const std::string& host_port) {
  std::string host = host_port;
  if (absl::StartsWith(host, "[")) {  // [::1]:port
    host = host.substr(1, host.find(']') == std::string::npos ? host.npos : host.find(']') - 1);
  } else if (std::count(host.begin(), host.end(), ':') == 1) {
    host = host.substr(0, host.find(':'));
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::Status ValidateSecurity(const ServerSecurityOptions& options,
                              const std::string& listen_address) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  }
  if (!options.tls() && !options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca (mutual TLS) needs TLS: give --tls_cert and --tls_key too");
  }
  if (!options.tls() && !options.allow_plaintext && !IsLoopbackAddress(listen_address)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "refusing to listen on ", listen_address,
        " without TLS: other hosts can reach it. Give --tls_cert and --tls_key, or pass "
        "--allow_plaintext to accept unencrypted, unauthenticated-by-transport traffic"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options) {
  if (!options.tls()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  PS_ASSIGN_OR_RETURN(pair.private_key, ReadSmallFile(options.tls_key_file));
  PS_ASSIGN_OR_RETURN(pair.cert_chain, ReadSmallFile(options.tls_cert_file));
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!options.tls_client_ca_file.empty()) {
    PS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadSmallFile(options.tls_client_ca_file));
    // Request and verify, but do not fail the handshake without one: the call then gets a clear
    // UNAUTHENTICATED from Authenticate instead of an opaque connection error.
    ssl.client_certificate_request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const ServerSecurityOptions& options) {
  std::unique_ptr<Authenticator> auth(new Authenticator());
  auth->require_tls_ = options.tls();
  auth->require_client_cert_ = options.tls() && !options.tls_client_ca_file.empty();
  if (options.tokens_file.empty()) return auth;
  PS_ASSIGN_OR_RETURN(std::string contents, ReadSmallFile(options.tokens_file));
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line.substr(0, line.find('#')));
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.tokens_file, ":", line_number, ": expected \"identity token\""));
    }
    if (fields[1].size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.tokens_file, ":", line_number,
                       ": token shorter than 16 characters (use e.g. `openssl rand -hex 32`)"));
    }
    if (!auth->identity_by_token_.emplace(std::string(fields[1]), std::string(fields[0])).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.tokens_file, ":", line_number, ": token used twice"));
    }
  }
  if (auth->identity_by_token_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(options.tokens_file, " holds no token"));
  }
  return auth;
}

absl::StatusOr<std::string> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (require_tls_) {
    bool tls = false;
    if (auth != nullptr) {
      for (const grpc::string_ref& v : auth->FindPropertyValues("transport_security_type")) {
        tls |= v == "ssl";
      }
    }
    if (!tls) {
      return absl::UnauthenticatedError(
          "this server takes calls over TLS only (a plaintext port is for health checks)");
    }
  }
  if (require_client_cert_) {
    if (auth == nullptr || !auth->IsPeerAuthenticated()) {
      return absl::UnauthenticatedError(
          "a client certificate signed by the server's --tls_client_ca is required (mutual TLS)");
    }
  }
  if (identity_by_token_.empty()) return std::string();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "no token: send `authorization: Bearer <token>` metadata (ps-worker --token_file)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("authorization metadata must be `Bearer <token>`");
  }
  const std::string* identity = nullptr;
  for (const auto& [token, name] : identity_by_token_) {
    if (ConstantTimeEquals(token, value)) identity = &name;
  }
  if (identity == nullptr) return absl::UnauthenticatedError("unknown token");
  return *identity;
}

}  // namespace ps
