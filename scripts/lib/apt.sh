# shellcheck shell=bash
# Debian packages for the test suite's peers. Sourced by scripts/test.sh; defines functions only.
#
#   kiln_apt_install PKG...   apt-get install the packages (as root, or through passwordless
#                             sudo). Returns 2 when it cannot (no apt-get, not root and no sudo),
#                             1 when apt-get fails. Runs `apt-get update` once per script run.
#
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step checks its
# own status.

kiln_apt_updated=""

kiln_apt_install() {
  local sudo=""
  if ! command -v apt-get >/dev/null; then
    echo "cannot install $* here: no apt-get" >&2
    return 2
  fi
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "cannot install $* here: not root and no passwordless sudo (apt-get install $* by hand)" >&2
      return 2
    fi
  fi
  echo "apt-get install $*"
  if [ -z "$kiln_apt_updated" ]; then
    $sudo apt-get update -qq || return 1
    kiln_apt_updated=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || return 1
}
