# shellcheck shell=bash
# The browser test of `kiln ui` (jobs/tests/ui.rs, jobs/tests/ui_browser.mjs): Debian's chromium
# driven by npm's playwright-core. Sourced by scripts/test.sh after scripts/lib/apt.sh; defines
# functions only.
#
#   kiln_browser_install   installs Debian's chromium (and nodejs, npm) with apt-get when
#                          missing, and playwright-core $kiln_playwright_version into
#                          $KILN_CACHE/node (outside the clone; reinstalled only when the
#                          version differs); exports KILN_CHROMIUM and sets kiln_browser_note
#                          (the versions). Returns 2 when a part is missing and cannot be
#                          installed here, 1 when an install fails.
#
# playwright-core is the library without its browser downloads: it drives the system chromium
# (`executablePath`), so nothing but the npm package is fetched.

kiln_playwright_version=1.65.1
kiln_browser_note=""

kiln_browser_install() {
  local rc node_dir=$KILN_CACHE/node have=""
  if ! command -v chromium >/dev/null; then
    kiln_apt_install chromium || { rc=$?; return "$rc"; }
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    kiln_apt_install nodejs npm || { rc=$?; return "$rc"; }
  fi
  export KILN_CHROMIUM
  KILN_CHROMIUM=$(command -v chromium)
  if [ -f "$node_dir/node_modules/playwright-core/package.json" ]; then
    have=$(node -p "require('$node_dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
  fi
  if [ "$have" != "$kiln_playwright_version" ]; then
    echo "npm install playwright-core@$kiln_playwright_version into $node_dir"
    mkdir -p "$node_dir" || return 1
    npm install --prefix "$node_dir" --no-audit --no-fund --silent \
      "playwright-core@$kiln_playwright_version" || return 1
  fi
  # shellcheck disable=SC2034 # read by scripts/test.sh
  kiln_browser_note="$("$KILN_CHROMIUM" --version 2>/dev/null | head -n 1), playwright-core $kiln_playwright_version"
}
