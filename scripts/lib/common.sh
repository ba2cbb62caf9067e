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
