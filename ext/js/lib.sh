# Sourced by setup, run-tests and bench/run-wake. Sets JS_DIR and REPO_ROOT and defines
# helpers; it changes nothing by itself.
JS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$JS_DIR/../.." && pwd)"

# The shoal extension: $SHOAL_EXT, or ext/target/release/libshoal.so under the repo root.
# A relative SHOAL_EXT is taken from the caller's working directory.
shoal_ext_path() {
  local p="${SHOAL_EXT:-$REPO_ROOT/ext/target/release/libshoal.so}"
  case "$p" in /*) ;; *) p="$PWD/$p" ;; esac
  printf '%s\n' "$p"
}

# Print the path of a working bun: node_modules/.bin/bun (the `bun` package, whose
# postinstall puts the binary in place), else the binary inside the platform package
# (@oven/bun-linux-x64 and friends) when the postinstall could not run.
find_bun() {
  local cand
  for cand in "$JS_DIR/node_modules/.bin/bun" "$JS_DIR"/node_modules/@oven/bun-*/bin/bun; do
    if [ -x "$cand" ] && "$cand" --version >/dev/null 2>&1; then
      printf '%s\n' "$cand"
      return 0
    fi
  done
  return 1
}
