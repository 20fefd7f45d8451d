# Sourced by scripts/test: phase bench-smoke (each benchmark binary with --smoke).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

phase_bench_smoke() {
  if [[ ! -f bench/src/main.rs && ! -f bench/src/bin/shoal-bench.rs ]]; then
    log "no shoal-bench binary; nothing to do"
    note "skipped: no shoal-bench binary"
    return 0
  fi
  local b
  for b in shoal-bench shoal-alloc-bench shoal-offer-bench shoal-agent-bench shoal-omega; do
    [[ -f bench/src/main.rs && $b == shoal-bench ]] || [[ -f bench/src/bin/$b.rs ]] || continue
    log "benchmark $b --smoke"
    # Run what the build phase built: `cargo run -p` would unify features differently from the
    # workspace build and recompile dependencies.
    local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/$b"
    [[ -x $bin ]] || cargo build -q -p shoal-bench --bin "$b" "${CARGO_LOCKED[@]}"
    if ! "$bin" --smoke; then
      TEST_FAILED=1
      note "FAILED: $b"
    fi
  done
}
