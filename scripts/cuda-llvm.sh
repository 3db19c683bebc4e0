#!/usr/bin/env bash
# Installs the LLVM bundle that a CUDA build of Kiln links (burn-cuda -> cubecl-cuda ->
# cubecl-llvm), from PyPI instead of GitHub, so that `cargo build --features kiln-jobs/cuda`
# works on machines that reach PyPI but not GitHub. `bash scripts/cuda-llvm.sh --help`.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash scripts/cuda-llvm.sh [--prefix DIR]

cubecl-llvm's build script (through tracel-llvm-bundler 23.1.0-4) downloads a prebuilt LLVM
from GitHub unless $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 (default ~/.local/share/...)
already holds one, marked by a file .tracel-llvm-installed. This script fills that directory
from PyPI's mlc-llvm-static 23.1.1.post0 (static LLVM 23.1.1: archives, headers and an
llvm-config that accepts --link-static) and mlc-llvm-static-extra-targets 23.1.1.post0 (the
NVPTX back end), about 92 MB of wheels:

  1. pip download both wheels (no dependencies, binary only) and unpack them into DIR
     (default $KILN_CACHE/llvm-23.1.1, KILN_CACHE defaulting to ~/.cache/kiln);
  2. link the tracel directory to DIR/mlc_llvm_static/static and write the marker;
  3. install Debian's zlib1g-dev and libzstd-dev if their libraries are missing (llvm-config
     --system-libs asks for -lz -lzstd);
  4. check that llvm-config reports 23.1.x and lists the NVPTX libraries.

Then build with the CUDA version of the nodes' driver (cudarc otherwise assumes 13.4 when no
nvcc is installed), e.g. for CUDA 12.8:

  CUDARC_CUDA_VERSION=12080 cargo build --release --locked --features kiln-jobs/cuda --bin kiln

llvm-config is a Python 3 script: python3 must be on PATH during the build.

Options:
  --prefix DIR  where to unpack the wheels
  -h, --help    this help
EOF
}

cache=${KILN_CACHE:-$HOME/.cache/kiln}
prefix=$cache/llvm-23.1.1
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cuda-llvm.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh

version=23.1.1.post0
bundle=${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4
sdk=$prefix/mlc_llvm_static/static

if [ ! -x "$sdk/bin/llvm-config" ] || [ ! -d "$prefix/mlc_llvm_static_extra_targets-$version.dist-info" ]; then
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  echo "downloading mlc-llvm-static $version and mlc-llvm-static-extra-targets $version from PyPI"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$wheels" "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
  mkdir -p "$prefix"
  for wheel in "$wheels"/*.whl; do python3 -m zipfile -e "$wheel" "$prefix"; done
  chmod +x "$sdk/bin/llvm-config"
fi

mkdir -p "$(dirname "$bundle")"
if [ -e "$bundle" ] && [ ! -L "$bundle" ]; then
  echo "$bundle exists and is not a link made by this script (a bundle tracel-llvm-bundler downloaded?); move it away first" >&2
  exit 1
fi
ln -sfn "$sdk" "$bundle"
touch "$bundle/.tracel-llvm-installed"

missing=()
for lib in z zstd; do
  [ -e "/usr/lib/x86_64-linux-gnu/lib$lib.so" ] || [ -e "/usr/lib/x86_64-linux-gnu/lib$lib.a" ] || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
  kiln_apt_install zlib1g-dev libzstd-dev \
    || { echo "LLVM's system libraries (-l${missing[*]}) are missing: apt-get install zlib1g-dev libzstd-dev" >&2; exit 1; }
fi

config=$bundle/bin/llvm-config
llvm_version=$("$config" --version)
case $llvm_version in
  23.1.*) ;;
  *) echo "$config reports LLVM $llvm_version; cubecl-llvm 0.11.3 (llvm-sys 231) needs 23.1" >&2; exit 1 ;;
esac
"$config" --link-static --libs | grep -q -- '-lLLVMNVPTXCodeGen' \
  || { echo "$config lists no NVPTX libraries: mlc-llvm-static-extra-targets is missing from $prefix" >&2; exit 1; }
echo "LLVM $llvm_version with NVPTX ready at $bundle -> $sdk"
