#!/usr/bin/env bash
# Builds the kiln image without a Docker daemon or a container registry: the runtime stage
# of deploy/docker/Dockerfile (Debian trixie with ca-certificates and tzdata, the non-root
# user kiln 10001:10001, the entrypoint, environment and ports) from the Debian mirror
# (debootstrap) and a kiln binary built here, committed by buildah and written as an OCI
# archive. It then runs `kiln --version` in the image as the user kiln.
#
#   deploy/docker/build-oci.sh [--binary PATH] [--out FILE.tar] [--tag NAME:TAG]
#
# Default binary: `cargo build --profile dist --locked --bin kiln` (what the Dockerfile's build
# stage runs). Needs root and `apt-get install debootstrap buildah`; buildah stores images
# with the vfs driver and runs with chroot isolation (no daemon, no user namespaces needed).
# Load the result elsewhere with `podman load -i FILE.tar` or `skopeo copy
# oci-archive:FILE.tar docker://registry.example.com/kiln:TAG`.
set -euo pipefail
cd "$(dirname "$0")/../.."

binary="" out="" tag="kiln:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "build-oci.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cache="${KILN_CACHE:-$HOME/.cache/kiln}/oci"
out=${out:-$cache/kiln-oci.tar}
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { echo "build-oci.sh: $tool missing (apt-get install debootstrap buildah)" >&2; exit 1; }
done

if [ -z "$binary" ]; then
  cargo build --profile dist --locked --bin kiln
  binary="${CARGO_TARGET_DIR:-target}/dist/kiln"
fi
[ -x "$binary" ] || { echo "build-oci.sh: no executable at $binary" >&2; exit 1; }

# The runtime stage's base: Debian trixie, minimal, with the Dockerfile's two packages. Made
# once and kept in the cache (about 220 MB; debootstrap takes a few minutes).
rootfs=$cache/trixie-rootfs
if [ ! -f "$rootfs/.complete" ]; then
  rm -rf "$rootfs"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=ca-certificates,tzdata trixie "$rootfs" \
    http://deb.debian.org/debian
  touch "$rootfs/.complete"
fi

c=$(buildah from scratch)
trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$c" "$rootfs" /
# As the Dockerfile: the kiln user, no package lists or caches left in the image.
buildah run "$c" -- sh -c 'rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /.complete \
  && groupadd --system --gid 10001 kiln \
  && useradd --system --uid 10001 --gid kiln --home-dir /var/lib/kiln --create-home \
     --shell /usr/sbin/nologin kiln'
buildah copy --quiet --chmod 0755 "$c" "$binary" /usr/local/bin/kiln
buildah config \
  --user 10001:10001 \
  --workingdir /var/lib/kiln \
  --env RUST_LOG=info --env TMPDIR=/tmp \
  --port 8501 --port 50050 --port 50051 --port 50052 \
  --entrypoint '["/usr/local/bin/kiln"]' --cmd '["--help"]' \
  --label org.opencontainers.image.title=kiln \
  --label org.opencontainers.image.source=deploy/docker/build-oci.sh \
  "$c"
buildah commit --quiet --format oci "$c" "$tag" >/dev/null
rm -f "$out"
buildah push --quiet "$tag" "oci-archive:$out:$tag"

# Run it: a fresh container of the committed image, as its configured user.
t=$(buildah from --quiet "$tag")
trap 'buildah rm "$c" "$t" >/dev/null 2>&1 || true' EXIT
version=$(buildah run --user 10001:10001 "$t" -- /usr/local/bin/kiln --version)
whoami=$(buildah run "$t" -- id -u)
echo "image $tag: $(du -h "$out" | cut -f1) OCI archive at $out; in it, as uid $whoami: $version"
