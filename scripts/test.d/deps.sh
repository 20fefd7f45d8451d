# Sourced by scripts/test: phase deps (the Debian packages).
# shellcheck shell=bash disable=SC2034  # globals shared by scripts/test and its phase files

REQUIRED_PKGS=(docker.io busybox-static iptables etcd-server etcd-client zookeeperd default-jre-headless
               python3-venv ca-certificates)
OPTIONAL_PKGS=(golang-go golang-github-mesos-mesos-go-dev)
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

phase_deps() {
  local p missing_req=() missing_opt=()
  for p in "${REQUIRED_PKGS[@]}"; do pkg_installed "$p" || missing_req+=("$p"); done
  for p in "${OPTIONAL_PKGS[@]}"; do pkg_installed "$p" || missing_opt+=("$p"); done
  if ((${#missing_req[@]} + ${#missing_opt[@]} == 0)); then
    log "all packages already installed"
    return 0
  fi
  log "missing: ${missing_req[*]} ${missing_opt[*]}"
  if ! can_root; then
    echo "not root and no sudo: cannot install ${missing_req[*]} ${missing_opt[*]}" \
         "(install them by hand, or run with --no-deps)" >&2
    ((${#missing_req[@]} == 0)) || return 1
    ((IN_CI)) && return 1
    return 0
  fi
  as_root apt-get "${APT_OPTS[@]}" update || warn "apt-get update failed; trying the install anyway"
  if ((${#missing_req[@]})); then
    as_root apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing_req[@]}"
  fi
  if ((${#missing_opt[@]})); then
    if ! as_root apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${missing_opt[@]}"; then
      ((IN_CI)) && { echo "failed to install ${missing_opt[*]}" >&2; return 1; }
      warn "could not install ${missing_opt[*]}; the Go (mesos-go) compatibility tests will skip"
      note "ok (without ${missing_opt[*]})"
    fi
  fi
}
