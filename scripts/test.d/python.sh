# Sourced by scripts/test: phase python (a venv with pymesos 0.3.15).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

VENV=$ROOT/.venv

python_body() {
  if "$VENV/bin/python" -c 'import pymesos' >/dev/null 2>&1; then
    log "pymesos already installed in $VENV"
    return 0
  fi
  if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Debian's python3 (python3-venv) is what a fresh machine has; fall back to PATH.
    local base=${SHOAL_TEST_PYTHON_BASE:-}
    if [[ -z $base ]]; then
      if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
        base=/usr/bin/python3
      else
        base=python3
      fi
    fi
    log "creating $VENV with $base"
    rm -rf "$VENV"
    "$base" -m venv "$VENV" || fail "python3 -m venv failed (package python3-venv)"
  fi
  # pymesos 0.3.15 needs http-parser 0.9.0, whose C extension does not build on
  # Python 3.11: install it without the extension (pure-Python parser).
  local hp=$SHOAL_TEST_TMP/http-parser
  rm -rf "$hp"; mkdir -p "$hp"
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: http-parser==0.9.0 -d "$hp" \
    || fail "pip download http-parser==0.9.0 failed"
  tar -C "$hp" -xzf "$hp/http-parser-0.9.0.tar.gz"
  sed -i 's/run_setup(not IS_PYPY)/run_setup(False)/' "$hp/http-parser-0.9.0/setup.py"
  rm -f "$hp"/http-parser-0.9.0/http_parser/*.so
  "$VENV/bin/python" -m pip install -q "$hp/http-parser-0.9.0" pymesos==0.3.15 \
    || fail "pip install pymesos==0.3.15 failed"
  "$VENV/bin/python" -c 'import pymesos' || fail "pymesos installed but does not import"
  log "installed pymesos 0.3.15 into $VENV"
}

phase_python() {
  service_phase "the pymesos venv" SHOAL_TEST_PYTHON "$VENV/bin/python" python_body
}
