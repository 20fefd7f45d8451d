# Sourced by scripts/test: phase zookeeper (a private ZooKeeper on 127.0.0.1, for Mesos
# master detection: what frameworks given `--master zk://…` read).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

ZK_JARS=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar

zk_ruok() {
  local answer
  answer=$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null ) || return 1
  [[ $answer == imok ]]
}

zookeeper_body() {
  if port_answers "$ZK_PORT"; then
    zk_ruok || fail "127.0.0.1:$ZK_PORT answers but is not a ZooKeeper (no imok)"
    log "ZooKeeper already answers on 127.0.0.1:$ZK_PORT"
    return 0
  fi
  command -v java >/dev/null 2>&1 || fail "no java on PATH (package default-jre-headless)"
  [[ -f /usr/share/java/zookeeper.jar ]] || fail "no /usr/share/java/zookeeper.jar (package zookeeperd)"
  local dir=$SHOAL_TEST_TMP/zookeeper
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
maxSessionTimeout=60000
CFG
  log "starting ZooKeeper on 127.0.0.1:$ZK_PORT (data $dir/data, log $dir/zookeeper.log)"
  setsid java -Xmx256m -cp "$ZK_JARS" -Dzookeeper.log.dir="$dir" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" \
    >"$dir/zookeeper.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$SHOAL_TEST_TMP/zookeeper.pid"
  if ! WAIT_PID=$pid wait_until 90 zookeeper zk_ruok; then
    tail -n 20 "$dir/zookeeper.log" >&2 || true
    fail "ZooKeeper did not answer imok (log: $dir/zookeeper.log)"
  fi
  log "ZooKeeper answers imok (pid $pid)"
}

phase_zookeeper() {
  service_phase "ZooKeeper" SHOAL_TEST_ZK "127.0.0.1:$ZK_PORT" zookeeper_body
}
