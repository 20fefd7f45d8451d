# Sourced by scripts/test: phase build.
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

phase_build() {
  cargo build --workspace --all-targets "${CARGO_LOCKED[@]}"
}
