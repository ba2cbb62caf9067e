#!/bin/sh
# The official image's contract: the default user from RABBITMQ_DEFAULT_USER/PASS, reachable
# from other containers (not loopback-only), logs to the console, and a clean stop on SIGTERM.
set -eu
mkdir -p /var/lib/rabbitmq /etc/rabbitmq
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
cat >/etc/rabbitmq/rabbitmq.conf <<CONF
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
loopback_users = none
log.console = true
log.file = false
CONF
if [ "${1:-}" != rabbitmq-server ]; then
  exec "$@"
fi
shift
# Debian's /usr/sbin/rabbitmq-server is a wrapper that runs the server under `su` without exec:
# as PID 1 it ignored `docker stop`'s SIGTERM, and every stop waited 10 s for SIGKILL and an
# unclean broker. The server's own script, run as PID 1 here, traps SIGTERM and stops the node.
cd /var/lib/rabbitmq
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups -- /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
