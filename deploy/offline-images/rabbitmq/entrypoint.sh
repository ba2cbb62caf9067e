#!/bin/sh
# The official image's contract: the default user from RABBITMQ_DEFAULT_USER/PASS, reachable
# from other containers (not loopback-only), logs to the console.
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
exec "$@"
