#!/usr/bin/env bash
# Throwaway certificates for trying TLS locally and for the security tests — never for
# production. Creates in DIR (openssl, all PEM, keys unencrypted PKCS#8):
#   ca.pem ca.key              a test CA
#   other-ca.pem               an unrelated CA (for "certificate from another CA" cases)
#   server.pem server.key      signed by ca.pem, names localhost and 127.0.0.1 (Kafka listeners)
#   localhost.pem localhost.key  signed by ca.pem, names localhost only (PostgreSQL: connecting
#                              to 127.0.0.1 with verify-full must fail, verify-ca must pass)
#   client.pem client.key      signed by ca.pem, CN=certuser (PostgreSQL `cert` authentication)
#
#   scripts/dev-certs.sh DIR
set -euo pipefail
DIR="${1:?usage: $0 DIR}"
mkdir -p "$DIR"; cd "$DIR"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.pem" 2>/dev/null
}
leaf() { # name CN SAN extendedKeyUsage
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s\n' \
    "$4" "${3:+subjectAltName=$3}" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca "ngsiflow test CA"
ca other-ca "unrelated test CA"
leaf server localhost "DNS:localhost,IP:127.0.0.1" serverAuth
leaf localhost localhost "DNS:localhost" serverAuth
leaf client certuser "" clientAuth
chmod 0600 ./*.key
