# Warren's shared shell helpers. Source it from a script, after `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"        (from scripts/)
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"     (from scripts/check/ or scripts/perf/)
# It sets `repo` (the checkout's root, whatever the caller's directory) and defines:
#   log TEXT...      one line on stderr, prefixed with the script's name (or $log_name)
#   die TEXT...      log, then exit 1
#   free_port        a TCP port on 127.0.0.1 that nothing listens on now
#   psql_q ARGS...   psql, quiet and unaligned, tuples only, stopping at the first error
#                    (pass the database URL or -d/-h/-U as usual)
#   take_handed_over_dockerd
#                    the pid of the dockerd a `compose-check --build-only` run left for the full
#                    check, when it still runs (printed; the hand-over is forgotten either way)
#   save_host_netfilter
#                    before starting a dockerd: keep the host's netfilter rules
#   stop_dockerd PID stop a dockerd the project started (up to 30 s), then put the host's
#                    netfilter rules back and remove the docker0 bridge it made

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

log() { printf '[%s] %s\n' "${log_name:-$(basename "$0")}" "$*" >&2; }
die() { log "$*"; exit 1; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
psql_q() { psql -v ON_ERROR_STOP=1 -qAtX "$@"; }

# Where `scripts/check/compose-check --build-only` leaves the pid of a dockerd it started, for
# whoever stops it next: the full check, or CI's cleanup when CI ends before that.
compose_check_dockerd=/var/tmp/warren-compose-check.dockerd
take_handed_over_dockerd() {
  local pid
  [ -s "$compose_check_dockerd" ] || return 0
  pid=$(cat "$compose_check_dockerd")
  rm -f "$compose_check_dockerd"
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then echo "$pid"; fi
}

# Docker's engine adds netfilter rules when it starts (NAT with connection tracking, its FORWARD
# chains) and the docker0 bridge, and leaves them when it stops; every packet on the host, loopback
# included, then passes those hooks. On CI's machines nothing of the kind was there before the
# compose check started an engine, and the benchmarks run on them after CI (docs/benchmarks.md,
# forty-fifth round: 3-8 µs more CPU per single event). So a dockerd the project starts is stopped
# with the host's rules put back as they were.
host_netfilter=/var/tmp/warren-compose-check.netfilter
save_host_netfilter() {
  # A snapshot already there was taken before an earlier start of the project's dockerd (a
  # restart, or a run that ended before putting it back): that is still the host's own state.
  [ ! -f "$host_netfilter" ] || return 0
  command -v nft >/dev/null || return 0
  nft list ruleset >"$host_netfilter.new" 2>/dev/null || { rm -f "$host_netfilter.new"; return 0; }
  rm -f "$host_netfilter.no-docker0"
  ip link show docker0 >/dev/null 2>&1 || : >"$host_netfilter.no-docker0"
  mv "$host_netfilter.new" "$host_netfilter"
}
restore_host_netfilter() {
  [ -f "$host_netfilter" ] || return 0
  if nft flush ruleset && nft -f "$host_netfilter"; then
    log "put the host's netfilter rules back as they were before dockerd started"
  else
    log "could not put the host's netfilter rules back (kept in $host_netfilter)"
    return 0
  fi
  if [ -f "$host_netfilter.no-docker0" ]; then ip link delete docker0 2>/dev/null || true; fi
  rm -f "$host_netfilter" "$host_netfilter.no-docker0"
}
stop_dockerd() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$1" 2>/dev/null || break; sleep 1; done
  kill -0 "$1" 2>/dev/null || restore_host_netfilter
}
