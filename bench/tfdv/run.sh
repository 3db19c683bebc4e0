#!/usr/bin/env bash
# Kiln's statistics and drift checked against TensorFlow Data Validation 1.16.1 (issue 16).
# `bash bench/tfdv/run.sh --help` for what it does. Not part of scripts/test.sh: the first run
# installs TFDV (about 3 minutes, 2.5 GB) into its own venv, so CI may skip it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash bench/tfdv/run.sh [--kiln PATH] [--rows N] [--work DIR] [-- COMPARE_ARGS...]

Compares Kiln's write-pass statistics, its TFDV protobuf export and its drift with TFDV 1.16.1
on the same TFRecord shards, and prints each phase's time:

  venv       a virtual environment at $KILN_CACHE/tfdv-venv with the pinned
             bench/tfdv/requirements.txt, reinstalled only when that file changes (sha256
             stamp); needs CPython 3.9-3.11 (TFDV 1.16.1 has no other wheels): the first of
             $KILN_TFDV_PYTHON, python3.11, python3.10, python3.9 that is one
  events     kiln gen events --rows N --days 10 --plant device-mix@2026-11-20 (N / 10 events a
             day; on 2026-11-20 half of the events report device `tablet`)
  features   kiln features examples/daily_ctr/job.toml for 2026-11-19 (clean) and 2026-11-20
             (planted), each into WORK/<date>/examples (16 TFRecord gzip + 16 Parquet shards)
  kiln stats kiln stats WORK/<date>/examples --json --tfdv WORK/<date>/kiln.pb, and
             kiln stats WORK/2026-11-20/examples --baseline WORK/2026-11-19/examples --json
  compare    bench/tfdv/compare.py: TFDV's generate_statistics_from_tfrecord on both days,
             field by field against Kiln and against exact figures from the Parquet shards;
             infer_schema / validate_statistics on Kiln's protobuf and on TFDV's statistics;
             TFDV's drift comparators against Kiln's drift (same flagged columns)

Exits non-zero if anything fails or compare.py finds a mismatch (it names the column, the
check and both values).

Options:
  --kiln PATH   the kiln binary (default $CARGO_TARGET_DIR/debug/kiln); this script builds
                nothing: cargo build --workspace --locked first
  --rows N      events over the 10 days (default 2000000: about 183k examples a day)
  --work DIR    scratch directory, emptied first (default $KILN_CACHE/tfdv-work)
  -- ARGS       passed to compare.py (e.g. --verbose, --numeric-threshold 0.2)
  -h, --help    this help

Environment:
  KILN_CACHE        default ~/.cache/kiln (tfdv-venv/, tfdv-work/)
  CARGO_TARGET_DIR  default $KILN_CACHE/target
  KILN_TFDV_PYTHON  the Python 3.9-3.11 interpreter to build the venv from
EOF
}

export KILN_CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KILN_CACHE/target}"
case $KILN_CACHE in /*) ;; *) KILN_CACHE=$PWD/$KILN_CACHE ;; esac
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR ;; esac

kiln=$CARGO_TARGET_DIR/debug/kiln
rows=2000000
work=$KILN_CACHE/tfdv-work
compare_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --kiln) kiln=${2:?--kiln needs a path}; shift 2 ;;
    --rows) rows=${2:?--rows needs a number}; shift 2 ;;
    --work) work=${2:?--work needs a directory}; shift 2 ;;
    --) shift; compare_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $kiln in /*) ;; *) kiln=$PWD/$kiln ;; esac
case $work in /*) ;; *) work=$PWD/$work ;; esac

cd "$(dirname "$0")/../.."
venv=$KILN_CACHE/tfdv-venv
requirements=bench/tfdv/requirements.txt
base_day=2026-11-19
cur_day=2026-11-20

die() { echo "run.sh: $*" >&2; exit 1; }

phase_names=()
phase_secs=()
phase_start=0
phase() {
  phase_end
  phase_names+=("$1")
  phase_start=$(date +%s.%N)
  echo
  echo "=== $1"
}
phase_end() {
  if [ ${#phase_names[@]} -gt ${#phase_secs[@]} ]; then
    phase_secs+=("$(awk -v a="$phase_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')")
    printf '=== %s: %.1f s\n' "${phase_names[-1]}" "${phase_secs[-1]}"
  fi
}

# --- the kiln binary --------------------------------------------------------------------------

[ -x "$kiln" ] || die "no kiln binary at $kiln: build it (cargo build --workspace --locked) or pass --kiln PATH"
"$kiln" gen events --help | grep -q -- '--plant' \
  || die "$kiln has no \`gen events --plant\`: rebuild it (cargo build --workspace --locked)"

# --- the venv ---------------------------------------------------------------------------------

find_python() {
  local py
  for py in ${KILN_TFDV_PYTHON:-} python3.11 python3.10 python3.9; do
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys, venv; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))' \
      2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  return 1
}

verify_venv() {
  TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" -c '
import sys, tensorflow_data_validation as tfdv, tensorflow, pyarrow, apache_beam
if tfdv.__version__ != "1.16.1":
    sys.exit(f"tensorflow-data-validation {tfdv.__version__} is installed, not 1.16.1")
print("imports OK: python", sys.version.split()[0], "/ tensorflow-data-validation", tfdv.__version__,
      "/ tensorflow", tensorflow.__version__, "/ apache-beam", apache_beam.__version__,
      "/ pyarrow", pyarrow.__version__)' 2>"$work/venv-import.log" \
    || { grep -v -i 'warning\|ipython\|visualization' "$work/venv-import.log" >&2; return 1; }
}

make_venv() {
  local py
  py=$(find_python) || die "no CPython 3.9-3.11 with the venv module found (TFDV 1.16.1 has wheels for 3.9-3.11 only): install python3.11 (Debian 12: apt-get install python3.11 python3.11-venv) or set KILN_TFDV_PYTHON"
  echo "creating $venv with $py ($("$py" --version 2>&1))"
  mkdir -p "$KILN_CACHE"
  "$py" -m venv "$venv"
}

pip_install() {
  echo "pip install -r $requirements into $venv (the first install: about 3 minutes, 2.5 GB)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
    || die "pip install -r $requirements failed (see above)"
  sha256sum "$requirements" | cut -d' ' -f1 >"$venv/.kiln-requirements.sha256"
}

rm -rf "$work"
mkdir -p "$work"

phase venv
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -e "$venv" ] && ! "$venv/bin/python" -c '' 2>/dev/null; then
  echo "$venv does not run (its base Python changed?): recreating it"
  rm -rf "$venv"
fi
[ -e "$venv/bin/python" ] || make_venv
installed=0
if [ "$(cat "$venv/.kiln-requirements.sha256" 2>/dev/null || true)" != "$want" ]; then
  pip_install
  installed=1
else
  echo "$requirements unchanged (sha256 ${want:0:12}): nothing to install"
fi
if ! verify_venv; then
  [ "$installed" = 0 ] || die "TFDV does not import from the fresh $venv"
  echo "the installed TFDV does not work: recreating $venv"
  rm -rf "$venv"
  make_venv
  pip_install
  verify_venv || die "TFDV does not import from the fresh $venv"
fi

# --- the Kiln side ----------------------------------------------------------------------------

phase events
"$kiln" gen events --rows "$rows" --days 10 --end-date 2026-11-21 --out "$work/events" \
  --plant "device-mix@$cur_day"

for day in $base_day $cur_day; do
  phase "features $day"
  RUST_LOG=warn "$kiln" features examples/daily_ctr/job.toml --date "$day" \
    --source "events=$work/events" --out "$work/$day"
done

phase "kiln stats"
for day in $base_day $cur_day; do
  "$kiln" stats "$work/$day/examples" --json --tfdv "$work/$day/kiln.pb" >"$work/$day/kiln.json"
  echo "$work/$day/kiln.json, $work/$day/kiln.pb ($(stat -c %s "$work/$day/kiln.pb") bytes)"
done
"$kiln" stats "$work/$cur_day/examples" --baseline "$work/$base_day/examples" --json \
  >"$work/$cur_day/drift.json"
echo "$work/$cur_day/drift.json"

# --- TFDV -------------------------------------------------------------------------------------

phase compare
rc=0
TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" -W ignore bench/tfdv/compare.py \
  --baseline "$work/$base_day" --current "$work/$cur_day" --summary "$work/summary.json" \
  ${compare_args[@]+"${compare_args[@]}"} 2> >(grep -v -i -E \
    'warning|tf_record_iterator|eager execution|TFRecordDataset|instructions for updating|ipython|visualization|^ *$' >&2) \
  || rc=$?
phase_end

echo
echo "phase times:"
for i in "${!phase_names[@]}"; do
  printf '  %-22s %8.1f s\n' "${phase_names[$i]}" "${phase_secs[$i]}"
done
echo "summary: $work/summary.json"
if [ "$rc" != 0 ]; then
  echo "run.sh: compare.py found mismatches (exit status $rc)" >&2
  exit "$rc"
fi
