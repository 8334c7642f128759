// Who may call the server: TLS server credentials (optionally requiring client certificates) and
// per-worker bearer tokens. Turning any of it on is a flag; plaintext on an address other hosts can
// reach must be asked for explicitly.
#ifndef PS_SERVER_AUTH_H_
#define PS_SERVER_AUTH_H_

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace ps {

struct ServerSecurityOptions {
  std::string tls_cert_file;  // PEM; with tls_key_file turns TLS on
  std::string tls_key_file;
  std::string tls_client_ca_file;  // PEM; requires client certificates signed by it (mTLS)
  // "identity token" per line ('#' starts a comment): each worker authenticates with its token
  // in the `authorization: Bearer <token>` metadata of every call, and may act only as members it
  // joined as with that token.
  std::string tokens_file;
  bool allow_plaintext = false;  // needed to listen without TLS on a non-loopback address

  bool tls() const { return !tls_cert_file.empty(); }
};

// True for 127.0.0.0/8, ::1 and localhost, with or without a port.
bool IsLoopbackAddress(const std::string& host_port);

// INVALID_ARGUMENT for inconsistent options (a key without a certificate, a client CA without TLS)
// or plaintext on a non-loopback address without allow_plaintext.
absl::Status ValidateSecurity(const ServerSecurityOptions& options,
                              const std::string& listen_address);

// Reads the PEM files. NOT_FOUND naming a missing file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerSecurityOptions& options);

// Thread-safe after construction.
class Authenticator {
 public:
  // Reads the tokens file (if any). INVALID_ARGUMENT for a malformed line or a token used twice.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const ServerSecurityOptions& options);

  // The caller's identity: its token's name, or "" when tokens are off.
  // UNAUTHENTICATED: no token or an unknown one, (mTLS) no verified client certificate, or (TLS)
  // a call that did not come over TLS (a plaintext health-check port serves health checks only).
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContextBase& context) const;

  bool tokens_required() const { return !identity_by_token_.empty(); }

 private:
  Authenticator() = default;
  std::map<std::string, std::string> identity_by_token_;
  bool require_tls_ = false;
  bool require_client_cert_ = false;
};

}  // namespace ps

#endif  // PS_SERVER_AUTH_H_
