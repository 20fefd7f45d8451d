# Sourced by scripts/test: phase test (every test suite).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

has_doctests() {
  local meta
  meta=$(cargo metadata --no-deps --format-version 1 "${CARGO_LOCKED[@]}" 2>/dev/null) || return 0
  [[ $meta == *'"doctest":true'* ]]
}

phase_test() {
  export SHOAL_BIN=$TARGET_DIR/debug/shoal
  log "SHOAL_TEST_DOCKER=${SHOAL_TEST_DOCKER:-} SHOAL_TEST_ETCD=${SHOAL_TEST_ETCD:-}" \
      "SHOAL_TEST_PYTHON=${SHOAL_TEST_PYTHON:-} SHOAL_BIN=$SHOAL_BIN"
  local rc=0
  if cargo nextest --version >/dev/null 2>&1; then
    local extra=()
    local help
    help=$(cargo nextest run --help 2>/dev/null || true)
    [[ $help == *--no-tests* ]] && extra=(--no-tests=warn)
    cargo nextest run --workspace --no-fail-fast "${CARGO_LOCKED[@]}" "${extra[@]}" || rc=1
    if has_doctests; then
      cargo test --workspace --doc "${CARGO_LOCKED[@]}" || rc=1
    else
      log "no library with doc tests; skipping cargo test --doc"
    fi
  else
    cargo test --workspace --no-fail-fast "${CARGO_LOCKED[@]}" || rc=1
  fi
  if ((rc)); then
    TEST_FAILED=1
    note "FAILED"
  fi
}
