"""A CA and a server certificate signed by it, made with openssl the way the README says."""
import os
import subprocess

SCRIPT = """set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=ps-ca 2>/dev/null
key server.key
openssl req -new -key server.key -out server.csr -subj /CN=ps-server 2>/dev/null
printf 'subjectAltName=%s\\n' "$1" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \\
  -days 2 -extfile server.ext 2>/dev/null
"""


def make_server_certificate(folder, alt_names):
    """ca.pem, server.pem and server.key in `folder`, for `alt_names` (openssl's subjectAltName
    syntax, e.g. "DNS:localhost,IP:127.0.0.1"). Returns {file name: path}."""
    subprocess.run(["bash", "-c", SCRIPT, "certs", alt_names], cwd=folder, check=True)
    return {name: os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key")}
