# shellcheck shell=bash
# What building Kiln needs beyond Rust and a C compiler: OpenSSL's headers for librdkafka's
# TLS/SASL (rdkafka-sys builds librdkafka 2.12 from source and links the system OpenSSL) and
# pkg-config to find them; protoc, which the Spark Connect protos (apache-spark-connect-proto)
# are compiled with at build time, and the well-known types they import
# (google/protobuf/any.proto, timestamp.proto: Debian's libprotobuf-dev, which protoc alone
# does not bring). Sourced after scripts/lib/apt.sh; defines functions only.
#
#   kiln_build_deps   installs Debian's pkg-config and libssl-dev with apt-get when OpenSSL's
#                     development files are not found, protobuf-compiler when protoc is not on
#                     PATH and libprotobuf-dev when protoc cannot find
#                     google/protobuf/any.proto. Returns 2 when they are missing and cannot be
#                     installed, 1 when the installation fails.

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
  if ! kiln_protoc_has_well_known_types; then
    echo "protoc finds no google/protobuf/any.proto (the Spark Connect protos import it): installing libprotobuf-dev"
    kiln_apt_install libprotobuf-dev || { rc=$?; return "$rc"; }
    kiln_protoc_has_well_known_types || { echo "protoc still finds no google/protobuf/any.proto after installing libprotobuf-dev" >&2; return 1; }
  fi
}

# Whether protoc compiles a file importing google/protobuf/any.proto (its include path, or
# $PROTOC_INCLUDE as prost-build passes it).
kiln_protoc_has_well_known_types() {
  local dir rc
  dir=$(mktemp -d)
  printf 'syntax = "proto3";\nimport "google/protobuf/any.proto";\nmessage M { google.protobuf.Any a = 1; }\n' >"$dir/m.proto"
  rc=0
  "${PROTOC:-protoc}" -I"$dir" ${PROTOC_INCLUDE:+-I"$PROTOC_INCLUDE"} --descriptor_set_out=/dev/null "$dir/m.proto" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}
