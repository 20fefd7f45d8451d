# Sourced by scripts/test: the environment, the helpers every phase uses, phase timing,
# and the services this run started (stopped or left running at exit).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

# ---------------------------------------------------------------- environment
IN_CI=0
case "${CI:-}" in true|TRUE|True|1|yes) IN_CI=1 ;; esac

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export CARGO_TERM_PROGRESS_WHEN=never

if [[ -z "${SHOAL_TEST_TMP:-}" ]]; then
  SHOAL_TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-test.XXXXXX")
  TMP_CREATED=1
else
  mkdir -p "$SHOAL_TEST_TMP"
  TMP_CREATED=0
fi
export SHOAL_TEST_TMP

ETCD_PORT=${SHOAL_TEST_ETCD_PORT:-23790}
ETCD_PEER_PORT=${SHOAL_TEST_ETCD_PEER_PORT:-$((ETCD_PORT + 10))}
ZK_PORT=${SHOAL_TEST_ZK_PORT:-21810}
BUSYBOX_IMAGE=local/busybox:latest
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

CARGO_LOCKED=()
[[ -f Cargo.lock ]] && CARGO_LOCKED=(--locked)

if [[ $(id -u) == 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n env DEBIAN_FRONTEND=noninteractive)
else
  SUDO=(none)
fi
can_root() { [[ ${SUDO[0]:-} != none ]]; }
as_root() {
  if ! can_root; then echo "need root for: $*" >&2; return 1; fi
  "${SUDO[@]}" "$@"
}

log()  { printf '[scripts/test] %s\n' "$*"; }
warn() { printf '[scripts/test] WARNING: %s\n' "$*" >&2; }
# Inside a guarded phase body: print the reason and leave the body.
fail() {
  printf '[scripts/test] %s\n' "$*" >&2
  printf '%s' "$*" >"$SHOAL_TEST_TMP/.reason"
  exit 1
}

# Run "$@" in a subshell with errexit really active (a call in an if/||
# context would silently disable it). Result in GUARD_RC, reason in GUARD_REASON.
guarded() {
  rm -f "$SHOAL_TEST_TMP/.reason"
  set +e
  ( set -e; "$@" )
  GUARD_RC=$?
  set -e
  GUARD_REASON="command failed (see output above)"
  [[ -s "$SHOAL_TEST_TMP/.reason" ]] && GUARD_REASON=$(<"$SHOAL_TEST_TMP/.reason")
  rm -f "$SHOAL_TEST_TMP/.reason"
  return 0
}

# service_phase WHAT VAR VALUE BODY: run BODY (a function) guarded. When it works, export
# VAR=VALUE for the tests; when not, unset VAR and fail in CI, or (outside CI) print why and
# go on, so the tests that need it skip themselves with a reason.
service_phase() {
  local what=$1 var=$2 value=$3 body=$4
  guarded "$body"
  if ((GUARD_RC == 0)); then
    export "$var=$value"
    return 0
  fi
  unset "$var"
  ((IN_CI)) && { echo "$what is required in CI: $GUARD_REASON" >&2; return 1; }
  warn "$what unavailable ($GUARD_REASON); continuing without $var"
  note "skipped: $GUARD_REASON"
}

# alive PID: the process exists and is not a zombie (works for root-owned
# processes started through sudo, too).
alive() {
  local st
  st=$(grep -m1 '^State:' "/proc/$1/status" 2>/dev/null) || return 1
  [[ $st != *zombie* ]]
}

# wait_until SECONDS DESCRIPTION CMD...: poll CMD until it succeeds or the
# deadline passes. Optional WAIT_PID: give up early when that process died.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "${WAIT_PID:-}" ]] && ! alive "$WAIT_PID"; then
      echo "$what: process $WAIT_PID exited" >&2; return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$what: not ready after ${secs}s" >&2; return 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- phase timing
PH_NAMES=() PH_SECS=() PH_NOTES=()
CUR_PHASE='' CUR_START='' CUR_NOTE=''
TEST_FAILED=0

usecs() { local t=${EPOCHREALTIME/[.,]/}; echo "$t"; }

phase_end() {
  [[ -n $CUR_PHASE ]] || return 0
  local d=$(( $(usecs) - CUR_START ))
  PH_NAMES+=("$CUR_PHASE")
  PH_SECS+=("$(printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000)))")
  PH_NOTES+=("$CUR_NOTE")
  printf '==== phase %s: %s (%s s) ====\n' "$CUR_PHASE" "$CUR_NOTE" "${PH_SECS[-1]}"
  CUR_PHASE=
}

phase() {
  phase_end
  CUR_PHASE=$1 CUR_START=$(usecs) CUR_NOTE=ok
  printf '\n==== [%s] phase %s ====\n' "$(date +%H:%M:%S)" "$1"
}

note() { CUR_NOTE=$*; }

summary() {
  local i d
  printf '\n==== summary ====\n'
  printf '%-12s %9s  %s\n' phase seconds result
  for i in "${!PH_NAMES[@]}"; do
    printf '%-12s %9s  %s\n' "${PH_NAMES[$i]}" "${PH_SECS[$i]}" "${PH_NOTES[$i]}"
  done
  d=$(( $(usecs) - START_USECS ))
  printf '%-12s %9s\n' total "$(printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000)))"
}
START_USECS=$(usecs)

# ---------------------------------------------------------------- services
STARTED=()   # "name pid" of the services this run started

stop_pid() {  # stop_pid NAME PID GRACE_SECONDS
  local name=$1 pid=$2 grace=$3 deadline
  kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || as_root kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || as_root kill -KILL "$pid" 2>/dev/null || true
  fi
}

on_exit() {
  local rc=$? i name pid
  set +e
  if [[ -n $CUR_PHASE ]]; then
    ((rc != 0)) && CUR_NOTE="FAILED (exit $rc)"
    phase_end
  fi
  # Services started by this run (also those recorded by guarded subshells).
  for name in zookeeper etcd dockerd; do
    [[ -s "$SHOAL_TEST_TMP/$name.pid" ]] || continue
    STARTED+=("$name $(<"$SHOAL_TEST_TMP/$name.pid")")
    rm -f "$SHOAL_TEST_TMP/$name.pid"
  done
  if ((${#STARTED[@]})); then
    if ((IN_CI)); then
      for i in "${STARTED[@]}"; do
        name=${i%% *} pid=${i##* }
        case $name in dockerd) stop_pid "$name" "$pid" 30 ;; *) stop_pid "$name" "$pid" 10 ;; esac
      done
    else
      for i in "${STARTED[@]}"; do
        kill -0 "${i##* }" 2>/dev/null || continue
        log "left running for reuse: ${i%% *} (pid ${i##* }; log and data in $SHOAL_TEST_TMP)"
      done
    fi
  fi
  summary
  # Remove a scratch dir we made, unless a service left running lives in it or
  # (outside CI) something failed and its files may help.
  if ((TMP_CREATED)); then
    if ((IN_CI)); then
      rm -rf "$SHOAL_TEST_TMP" 2>/dev/null
    elif ((${#STARTED[@]} == 0 && rc == 0 && TEST_FAILED == 0)); then
      rm -rf "$SHOAL_TEST_TMP" 2>/dev/null
    else
      log "scratch files kept in $SHOAL_TEST_TMP"
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT
