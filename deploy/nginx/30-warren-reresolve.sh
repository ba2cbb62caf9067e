#!/bin/sh
# Runs from the nginx image's /docker-entrypoint.d/ (mounted by docker-compose.yml). nginx resolves
# `server gateway:8081` once, when it loads its config, so replicas added by
# `docker compose up --scale` would get no traffic until a restart. This watches the names in
# WARREN_RERESOLVE_HOSTS every WARREN_RERESOLVE_SECONDS (default 5) and reloads nginx, gracefully,
# when their set of addresses changes. (nginx 1.27.3+ can do this itself with `resolve` on an
# upstream server; the loop also works on older nginx.)
hosts=${WARREN_RERESOLVE_HOSTS:-}
[ -n "$hosts" ] || exit 0
interval=${WARREN_RERESOLVE_SECONDS:-5}

addresses() {
  for host in $hosts; do
    getent ahostsv4 "$host" | awk '{ print $1 }' | sort -u | tr '\n' ' '
    echo "/"
  done | tr -d '\n'
}

(
  last=$(addresses)
  while sleep "$interval"; do
    now=$(addresses)
    if [ "$now" != "$last" ]; then
      echo "warren-reresolve: upstream addresses changed ($last -> $now); reloading nginx"
      nginx -s reload || echo "warren-reresolve: reload failed; nginx keeps its current config"
      last=$now
    fi
  done
) &
echo "warren-reresolve: watching $hosts every ${interval}s"
