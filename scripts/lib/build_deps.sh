# shellcheck shell=bash
# What building Kiln needs beyond Rust and a C compiler: OpenSSL's headers for librdkafka's
# TLS/SASL (rdkafka-sys builds librdkafka 2.12 from source and links the system OpenSSL) and
# pkg-config to find them; protoc, which the Spark Connect protos (apache-spark-connect-proto)
# are compiled with at build time. Sourced after scripts/lib/apt.sh; defines functions only.
#
#   kiln_build_deps   installs Debian's pkg-config and libssl-dev with apt-get when OpenSSL's
#                     development files are not found, and protobuf-compiler when protoc is
#                     not on PATH. Returns 2 when they are missing and cannot be installed, 1
#                     when the installation fails.

kiln_build_deps() {
  local rc
  if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl; then
    echo "OpenSSL development files not found (librdkafka's TLS needs them): installing pkg-config libssl-dev"
    kiln_apt_install pkg-config libssl-dev || { rc=$?; return "$rc"; }
    pkg-config --exists openssl || { echo "pkg-config still finds no openssl after installing libssl-dev" >&2; return 1; }
  fi
  if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null; then
    echo "protoc not found (the Spark Connect protos are compiled with it): installing protobuf-compiler"
    kiln_apt_install protobuf-compiler || { rc=$?; return "$rc"; }
    command -v protoc >/dev/null || { echo "protoc still missing after installing protobuf-compiler" >&2; return 1; }
  fi
}
