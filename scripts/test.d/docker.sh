# Sourced by scripts/test: phase docker (a Docker daemon and local/busybox:latest).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

docker_body() {
  command -v docker >/dev/null 2>&1 || fail "no docker client on PATH (package docker.io)"
  if ! docker info >/dev/null 2>&1; then
    local dockerd
    dockerd=$(command -v dockerd 2>/dev/null || echo /usr/sbin/dockerd)
    [[ -x $dockerd ]] || fail "docker info fails and there is no dockerd (package docker.io)"
    can_root || fail "docker info fails and starting dockerd needs root"
    log "starting $dockerd --storage-driver=vfs (log: $SHOAL_TEST_TMP/dockerd.log)"
    "${SUDO[@]}" setsid "$dockerd" --storage-driver=vfs \
      >"$SHOAL_TEST_TMP/dockerd.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$SHOAL_TEST_TMP/dockerd.pid"
    if ! WAIT_PID=$pid wait_until 60 dockerd docker info; then
      tail -n 20 "$SHOAL_TEST_TMP/dockerd.log" >&2 || true
      fail "dockerd did not come up (log: $SHOAL_TEST_TMP/dockerd.log)"
    fi
    log "dockerd is up (pid $pid)"
  else
    log "a Docker daemon already answers"
  fi
  "$ROOT/scripts/busybox-image" "$BUSYBOX_IMAGE" || fail "could not build $BUSYBOX_IMAGE"
  local out
  out=$(docker run --rm "$BUSYBOX_IMAGE" echo shoal-docker-ok 2>&1) || true
  [[ $out == shoal-docker-ok ]] || fail "docker run $BUSYBOX_IMAGE does not work: $out"
  log "docker run $BUSYBOX_IMAGE works"
}

phase_docker() {
  service_phase "Docker" SHOAL_TEST_DOCKER "1" docker_body
}
