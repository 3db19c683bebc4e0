# shellcheck shell=bash
# What building Kiln needs beyond Rust and a C compiler: OpenSSL's headers for librdkafka's
# TLS/SASL (rdkafka-sys builds librdkafka 2.12 from source and links the system OpenSSL) and
# pkg-config to find them. Sourced after scripts/lib/apt.sh; defines functions only.
#
#   kiln_build_deps   installs Debian's pkg-config and libssl-dev with apt-get when OpenSSL's
#                     development files are not found. Returns 2 when they are missing and
#                     cannot be installed, 1 when the installation fails.

kiln_build_deps() {
  local rc
  if command -v pkg-config >/dev/null && pkg-config --exists openssl; then
    return 0
  fi
  echo "OpenSSL development files not found (librdkafka's TLS needs them): installing pkg-config libssl-dev"
  kiln_apt_install pkg-config libssl-dev || { rc=$?; return "$rc"; }
  pkg-config --exists openssl || { echo "pkg-config still finds no openssl after installing libssl-dev" >&2; return 1; }
}
