#!/usr/bin/env bash
# The test suite (the README's test command): installs and starts what the tests need, builds
# once, runs every crate's tests in groups and the peer checks, and prints each phase's time and
# a last line "N passed, N failed". `bash scripts/test.sh --help` for the options.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash scripts/test.sh [--fast]

Runs Kiln's whole test suite, installing what it needs on the way:
  python peers       a virtual environment at $KILN_CACHE/venv with the pinned
                     scripts/requirements-test.txt (moto_server for the S3 tests, TensorFlow
                     and pyarrow for the compatibility check), reinstalled only when that file
                     changes; its bin/ goes first on PATH
  postgresql         Debian's postgresql (apt-get, if missing) and a throwaway server on
                     127.0.0.1 on a free port for the run-metadata-store tests
  kafka              a throwaway Apache Kafka 4.4 broker (KRaft, one node) on 127.0.0.1 on a
                     free port for the Kafka tests (KILN_TEST_KAFKA); jars from Maven Central
                     cached in $KILN_CACHE/maven, Java 17+ and Maven (apt-get, if missing)
  hdfs               a throwaway HDFS 3.5 MiniDFSCluster (1 namenode, 1 datanode) on 127.0.0.1
                     for the HDFS tests (KILN_TEST_HDFS), the same way
  spark              a throwaway Spark 4.3 Connect server (local[2], Hive catalog in a temporary
                     Derby metastore) on 127.0.0.1 on a free port for the Spark bridge tests
                     (KILN_TEST_SPARK=sc://127.0.0.1:PORT), from the venv's pyspark wheel
  promtool           Debian's prometheus (apt-get, if promtool is missing): promtool checks
                     the --metrics-textfile output (TensorBoard, in the venv, the event files)
  browser            Debian's chromium, nodejs and npm (apt-get, if missing) and npm's
                     playwright-core in $KILN_CACHE/node: the `kiln ui` pages in a browser
  software gpu       Debian's mesa-vulkan-drivers and libvulkan1 (apt-get, if lavapipe's
                     driver is missing): a software Vulkan device on which the wgpu training
                     tests run real GPU kernels on the CPU (--device wgpu:cpu)
  build              pkg-config and libssl-dev (apt-get) if OpenSSL's headers are missing
                     (librdkafka's TLS), protobuf-compiler if protoc is (the Spark Connect
                     protos), then cargo test --workspace --locked --features kiln-jobs/wgpu
                     --no-run --all-targets (the benches and examples too, so that .ci/run's
                     lints see every target), cargo build --workspace --locked --features
                     kiln-jobs/wgpu --examples (every cargo command below passes the same
                     features)
  unit tests         cargo test --workspace --locked --no-fail-fast --lib --bins
  integration tests  cargo test --workspace --locked --no-fail-fast --test '*'
  doc tests          cargo test --workspace --locked --no-fail-fast --doc
  tensorflow compat  the write_compat example's TFRecord and Parquet shards read back by
                     TensorFlow and pyarrow (scripts/peers/tf_compat.py)
  deploy checks      kubectl kustomize on every deploy/k8s overlay and `kiln k8s train`
                     (4 GPU workers) through kubernetes-validate --strict, checkov
                     (deploy/k8s/.checkov.yaml) and hadolint on deploy/docker/Dockerfile
  oci image          debootstrap and buildah (apt-get, if missing): the image built without a
                     daemon by deploy/docker/build-oci.sh (Debian trixie rootfs cached in
                     $KILN_CACHE/oci) with this build's kiln; `kiln --version` runs in it
Every server it starts is stopped and its temporary files removed on exit, on failure and on
Ctrl-C. Prints each phase's time, a table of them, and as the last line "N passed, N failed"
summed over the test groups and peer checks; exits non-zero if anything failed.

Options:
  --fast      the inner loop: no external servers and no Python peers. Skips the venv,
              PostgreSQL, Kafka, HDFS, Spark and the peer checks, and runs the same test groups with
              KILN_TEST_FAST=1 set, which skip the tests that need servers.
              The full command (no options) stays the one to run before pushing.
  -h, --help  this help

Environment:
  KILN_CACHE        caches kept outside the clone (default ~/.cache/kiln): venv/, target/,
                    maven/ (the Maven repository and the Kafka and HDFS jars) and node/
                    (playwright-core)
  CARGO_TARGET_DIR  the build cache (default $KILN_CACHE/target, the same as .ci/run's)
  CI=true           a tool that is missing and cannot be installed is a failure, never a skip
EOF
}

fast=0
for arg in "$@"; do
  case $arg in
    --fast) fast=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Caches outside the clone. These values match .ci/run so both reuse one build cache.
export KILN_CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KILN_CACHE/target}"
export CARGO_INCREMENTAL=0
export CARGO_TERM_COLOR=never
# Relative paths are taken from where the command was run, not the repository root.
case $KILN_CACHE in /*) ;; *) KILN_CACHE=$PWD/$KILN_CACHE ;; esac
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR ;; esac

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/build_deps.sh
source scripts/lib/build_deps.sh
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh
# shellcheck source=scripts/lib/java.sh
source scripts/lib/java.sh
# shellcheck source=scripts/lib/kafka.sh
source scripts/lib/kafka.sh
# shellcheck source=scripts/lib/hdfs.sh
source scripts/lib/hdfs.sh
# shellcheck source=scripts/lib/spark.sh
source scripts/lib/spark.sh
# shellcheck source=scripts/lib/browser.sh
source scripts/lib/browser.sh
# shellcheck source=scripts/lib/lavapipe.sh
source scripts/lib/lavapipe.sh

ci=false
# The tests are built with the wgpu backend, whose tests run on lavapipe (see below). Every
# cargo command here passes the same features, so the test build is made once.
features=(--features kiln-jobs/wgpu)
if [ "${CI:-}" = true ]; then ci=true; fi
venv=$KILN_CACHE/venv
requirements=scripts/requirements-test.txt

passed=0
failed=0
phase_names=()
phase_ms=()
phase_notes=()
skipped=()
cur_phase=""
cur_start=0
tmp=""

# --- cleanup: one function for EXIT, INT and TERM --------------------------------------------

# shellcheck disable=SC2317 # invoked by the traps
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${1:-}" ]; then rc=$1; fi
  if [ -n "$cur_phase" ]; then
    echo "test.sh: stopped during phase '$cur_phase' (exit status $rc); cleaning up" >&2
  fi
  kiln_pg_stop
  kiln_kafka_stop
  kiln_hdfs_stop
  kiln_spark_stop
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'cleanup 130' INT
trap 'cleanup 143' TERM

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-test.XXXXXX")

# --- phases, timing and the summary ----------------------------------------------------------

now_ms() {
  local ns
  ns=$(date +%s%N)
  echo $((ns / 1000000))
}

secs() { printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100)); }

phase() {
  cur_phase=$1
  cur_start=$(now_ms)
  printf '\n== %s\n' "$1"
}

# phase_done [NOTE]: ends the current phase; NOTE goes into the table.
phase_done() {
  local ms
  ms=$(($(now_ms) - cur_start))
  if [ -n "${1:-}" ]; then echo "$cur_phase: $1"; fi
  echo "-- $cur_phase took $(secs "$ms") s"
  phase_names+=("$cur_phase")
  phase_ms+=("$ms")
  phase_notes+=("${1:-}")
  cur_phase=""
}

summary() {
  local i total=0 mode=""
  if [ "$fast" = 1 ]; then mode=" (--fast)"; fi
  printf '\n== summary%s\n' "$mode"
  for i in "${!phase_names[@]}"; do
    printf '%-20s %9s s  %s\n' "${phase_names[$i]}" "$(secs "${phase_ms[$i]}")" "${phase_notes[$i]}"
    total=$((total + phase_ms[i]))
  done
  printf '%-20s %9s s\n' "total" "$(secs "$total")"
  for i in "${skipped[@]}"; do echo "skipped: $i"; done
  echo "$passed passed, $failed failed"
}

finish() {
  summary
  if [ "$failed" = 0 ]; then exit 0; else exit 1; fi
}

# abort MESSAGE: a failure that stops the run (an install or the build); counts as 1 failed.
abort() {
  echo "test.sh: $1" >&2
  failed=$((failed + 1))
  if [ -n "$cur_phase" ]; then phase_done "FAILED: $1"; fi
  finish
}

# missing WHAT WHY: a tool that is absent and cannot be installed here. Under CI=true that is a
# failure that stops the run; elsewhere it is reported as skipped in the summary.
missing() {
  if [ "$ci" = true ]; then abort "$1 is missing and cannot be installed ($2); CI=true: failing"; fi
  echo "test.sh: WARNING: $1 is missing and cannot be installed ($2): skipped" >&2
  skipped+=("$1 ($2)")
  phase_done "skipped: $2"
}

need() {
  command -v "$1" >/dev/null || abort "$1 not found on PATH: $2"
}

# --- python peers ----------------------------------------------------------------------------

pip_install() {
  echo "pip install -r $requirements into $venv (the first install: about 2 GB, mostly TensorFlow)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
    || return 1
  sha256sum "$requirements" | cut -d' ' -f1 >"$venv/.kiln-requirements.sha256"
}

verify_venv() {
  # TensorFlow logs to stderr on import; shown only when the import fails.
  TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -c '
import moto, tensorflow, pyarrow, tensorboard
print("imports OK: moto", moto.__version__, "/ tensorflow", tensorflow.__version__,
      "/ pyarrow", pyarrow.__version__, "/ tensorboard", tensorboard.__version__)' 2>"$tmp/venv-import.log" \
    || { cat "$tmp/venv-import.log" >&2; return 1; }
  "$venv/bin/moto_server" --help >/dev/null || { echo "moto_server --help failed" >&2; return 1; }
}

# python3 -m venv needs Debian's python3-venv (ensurepip) when python3 is Debian's own.
make_venv() {
  local rc
  mkdir -p "$KILN_CACHE" || return 1
  if python3 -m venv "$venv"; then return 0; fi
  rm -rf "$venv"
  echo "python3 -m venv failed: installing Debian's python3-venv"
  kiln_apt_install python3-venv || { rc=$?; return "$rc"; }
  python3 -m venv "$venv"
}

setup_venv() {
  local want have installed=0
  want=$(sha256sum "$requirements" | cut -d' ' -f1) || return 1
  if [ -e "$venv" ] && ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "$venv does not run (its base Python changed?): recreating it"
    rm -rf "$venv"
  fi
  if [ ! -e "$venv/bin/python" ]; then
    echo "creating $venv"
    make_venv || return 1
  fi
  have=$(cat "$venv/.kiln-requirements.sha256" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    pip_install || return 1
    installed=1
  else
    echo "$requirements unchanged (sha256 ${want:0:12}): nothing to install"
  fi
  if ! verify_venv; then
    if [ "$installed" = 1 ]; then return 1; fi
    echo "the installed peers do not work: recreating $venv"
    rm -rf "$venv"
    make_venv && pip_install && verify_venv || return 1
  fi
}

# --- test groups and peer checks -------------------------------------------------------------

# group NAME CARGO-TEST-ARGS...: one `cargo test --workspace --locked` over part of the targets;
# counts libtest's "test result:" lines. A failing command without a failed test counts as 1.
group() {
  local name=$1 log rc=0 p f note
  shift
  log="$tmp/$(echo "$name" | tr ' ' '-').log"
  phase "$name"
  cargo test --workspace --locked "${features[@]}" --no-fail-fast "$@" 2>&1 | tee "$log" || rc=$?
  read -r p f < <(grep -oE 'test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed;' "$log" \
    | awk '{ p += $4; f += $6 } END { print p + 0, f + 0 }')
  note="$p passed, $f failed"
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    f=1
    note="$p passed, 1 failed (cargo test exited with status $rc without a failed test)"
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  phase_done "$note"
}

# peer NAME COMMAND...: a check against a real peer; 1 passed or 1 failed.
peer() {
  local name=$1
  shift
  phase "$name"
  if "$@"; then
    passed=$((passed + 1))
    phase_done "1 passed"
  else
    failed=$((failed + 1))
    phase_done "1 failed"
  fi
}

# shellcheck disable=SC2317 # invoked through peer
tf_compat() {
  local bin=$CARGO_TARGET_DIR/debug/examples/write_compat out=$tmp/tf_compat
  if [ ! -x "$bin" ]; then
    echo "no $bin (the build phase builds it)" >&2
    return 1
  fi
  "$bin" "$out" || return 1
  "$venv/bin/python" scripts/peers/tf_compat.py "$out"
}

# The Kubernetes manifests and the image, checked offline (deploy/k8s/README.md): every
# overlay rendered by kubectl kustomize and a 4-worker GPU `kiln k8s train` Job validated
# against Kubernetes 1.33's schemas (strict), checkov's policies, hadolint.
# shellcheck disable=SC2317 # invoked through peer
deploy_checks() {
  local bin=$CARGO_TARGET_DIR/debug/kiln out=$tmp/deploy rc=0 o
  mkdir -p "$out"
  for o in deploy/k8s/overlays/*/; do
    o=$(basename "$o")
    echo "kubectl kustomize deploy/k8s/overlays/$o"
    kubectl kustomize "deploy/k8s/overlays/$o" >"$out/$o.yaml" || { rc=1; continue; }
  done
  # With its spec ConfigMap: the three objects `train_on = "kubernetes"` creates.
  "$bin" k8s train examples/daily_ctr/job.toml --date 2026-11-20 --workers 4 \
    --gpus-per-worker 1 --include-spec >"$out/train-gpu-4.yaml" || rc=1
  local files=("$out"/*.yaml)
  kubernetes-validate --strict --quiet -k 1.33.0 "${files[@]}" || rc=1
  checkov --config-file deploy/k8s/.checkov.yaml -d "$out" || rc=1
  hadolint deploy/docker/Dockerfile || rc=1
  [ "$rc" = 0 ] && echo "deploy checks: ${#files[@]} rendered files valid, checkov and hadolint clean"
  return "$rc"
}

# The image without a Docker daemon (deploy/docker/build-oci.sh): the Dockerfile's runtime
# stage from a debootstrapped Debian trixie and this build's `kiln` (debug, stripped),
# committed by buildah as an OCI archive; `kiln --version` must print the binary's own
# version inside it, as uid 10001.
# shellcheck disable=SC2317 # invoked through peer
oci_image() {
  local bin=$CARGO_TARGET_DIR/debug/kiln copy=$tmp/kiln-stripped out want
  if ! command -v debootstrap >/dev/null || ! command -v buildah >/dev/null; then
    kiln_apt_install debootstrap buildah || return 1
  fi
  cp "$bin" "$copy" && strip "$copy" || return 1
  want="as uid 10001: $("$copy" --version)"
  out=$(bash deploy/docker/build-oci.sh --binary "$copy" --out "$tmp/kiln-oci.tar" --tag kiln:test) \
    || return 1
  echo "$out"
  STORAGE_DRIVER=vfs buildah rmi -f kiln:test >/dev/null 2>&1 || true
  grep -qF "$want" <<<"$out" || { echo "expected \"$want\" in the image's output" >&2; return 1; }
}

# --- the run ---------------------------------------------------------------------------------

need cargo "install the Rust toolchain (https://rustup.rs)"

# lavapipe (Mesa's software Vulkan device) runs the wgpu training tests' GPU kernels on the CPU
# (trainer/tests/wgpu.rs, jobs/tests/train_wgpu.rs).
phase "software gpu"
rc=0
kiln_lavapipe_install || rc=$?
case $rc in
  0) phase_done "$kiln_lavapipe_note" ;;
  2) missing "software gpu" "mesa-vulkan-drivers (lavapipe) missing: no apt-get, or not root and no passwordless sudo" ;;
  *) abort "apt-get install mesa-vulkan-drivers failed" ;;
esac
if [ "$fast" = 1 ]; then
  echo "test.sh --fast: no venv, no PostgreSQL, Kafka or HDFS, no peer checks; KILN_TEST_FAST=1"
  export KILN_TEST_FAST=1
  unset KILN_TEST_POSTGRES_URL KILN_TEST_KAFKA KILN_TEST_HDFS
else
  unset KILN_TEST_FAST
  need python3 "install Python 3 (Debian: apt-get install python3 python3-venv)"

  phase "python peers"
  setup_venv || abort "could not set up the Python peers in $venv"
  export VIRTUAL_ENV=$venv
  export PATH="$venv/bin:$PATH"
  phase_done

  phase "postgresql"
  rc=0
  kiln_pg_start || rc=$?
  case $rc in
    0) phase_done ;;
    2) missing postgresql "no apt-get, or not root and no passwordless sudo" ;;
    *) abort "PostgreSQL did not start" ;;
  esac

  phase "kafka"
  rc=0
  kiln_kafka_start || rc=$?
  case $rc in
    0) phase_done ;;
    2) missing kafka "no Java 17+ or Maven, and no apt-get, or not root and no passwordless sudo" ;;
    *) abort "Kafka did not start" ;;
  esac

  phase "hdfs"
  rc=0
  kiln_hdfs_start || rc=$?
  case $rc in
    0) phase_done ;;
    2) missing hdfs "no Java 17+ (javac) or Maven, and no apt-get, or not root and no passwordless sudo" ;;
    *) abort "HDFS did not start" ;;
  esac

  phase "spark"
  rc=0
  kiln_spark_start "$venv/bin/python" || rc=$?
  case $rc in
    0) phase_done ;;
    2) missing spark "no Java 17+ or no pyspark in the venv, and no apt-get, or not root and no passwordless sudo" ;;
    *) abort "the Spark Connect server did not start" ;;
  esac

  # promtool checks the --metrics-textfile files (jobs/tests/observability.rs).
  phase "promtool"
  rc=0
  command -v promtool >/dev/null || kiln_apt_install prometheus || rc=$?
  case $rc in
    0) phase_done "$(promtool --version 2>&1 | head -n 1)" ;;
    2) missing promtool "no apt-get, or not root and no passwordless sudo" ;;
    *) abort "apt-get install prometheus failed" ;;
  esac

  # chromium and playwright-core drive the `kiln ui` pages (jobs/tests/ui.rs).
  phase "browser"
  rc=0
  kiln_browser_install || rc=$?
  case $rc in
    0) phase_done "$kiln_browser_note" ;;
    2) missing browser "chromium, node or npm missing: no apt-get, or not root and no passwordless sudo" ;;
    *) abort "installing chromium or playwright-core failed" ;;
  esac
fi

phase "build"
rc=0
kiln_build_deps || rc=$?
case $rc in
  0) ;;
  2) abort "OpenSSL's development files (libssl-dev, pkg-config) or protoc (protobuf-compiler) are missing and cannot be installed here (no apt-get, or not root and no passwordless sudo)" ;;
  *) abort "apt-get install pkg-config libssl-dev failed" ;;
esac
# --timings: where a cold build spends its time, in $CARGO_TARGET_DIR/cargo-timings/.
cargo test --workspace --locked "${features[@]}" --no-run --all-targets --timings || abort "cargo test --no-run failed"
cargo build --workspace --locked "${features[@]}" --examples || abort "cargo build --examples failed"
phase_done

group "unit tests" --lib --bins
group "integration tests" --test '*'
group "doc tests" --doc

if [ "$fast" = 0 ]; then
  peer "tensorflow compat" tf_compat
fi

if [ "$fast" = 0 ]; then
  if command -v kubectl >/dev/null; then
    peer "deploy checks" deploy_checks
  else
    phase "deploy checks"
    missing kubectl "not on PATH (kubectl 1.32+ renders the kustomize overlays)"
  fi
  peer "oci image" oci_image
fi

finish
