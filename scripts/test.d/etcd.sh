# Sourced by scripts/test: phase etcd (an etcd on 127.0.0.1).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

etcdctl_local() {
  ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$ETCD_PORT" --dial-timeout=2s --command-timeout=3s "$@"
}
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

etcd_body() {
  command -v etcdctl >/dev/null 2>&1 || fail "no etcdctl on PATH (package etcd-client)"
  if port_answers "$ETCD_PORT"; then
    etcdctl_local endpoint health >/dev/null 2>&1 \
      || fail "127.0.0.1:$ETCD_PORT answers but is not a healthy etcd"
    log "etcd already answers on 127.0.0.1:$ETCD_PORT"
    return 0
  fi
  command -v etcd >/dev/null 2>&1 || fail "no etcd on PATH (package etcd-server)"
  local data=$SHOAL_TEST_TMP/etcd-data
  local c="http://127.0.0.1:$ETCD_PORT" p="http://127.0.0.1:$ETCD_PEER_PORT"
  mkdir -p "$data"
  log "starting etcd on $c (peer $p, data $data, log $SHOAL_TEST_TMP/etcd.log)"
  setsid etcd --name default --data-dir "$data" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "default=$p" \
    >"$SHOAL_TEST_TMP/etcd.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$SHOAL_TEST_TMP/etcd.pid"
  if ! WAIT_PID=$pid wait_until 60 etcd etcdctl_local endpoint health; then
    tail -n 20 "$SHOAL_TEST_TMP/etcd.log" >&2 || true
    fail "etcd did not become healthy (log: $SHOAL_TEST_TMP/etcd.log)"
  fi
  log "etcd is healthy (pid $pid)"
}

phase_etcd() {
  service_phase "etcd" SHOAL_TEST_ETCD "http://127.0.0.1:$ETCD_PORT" etcd_body
}
