#!/bin/sh
# What the official image's entrypoint does for the features Warren uses.
set -eu
if [ "${1:-}" = nginx ]; then
  filter=${NGINX_ENVSUBST_FILTER:-}
  defined=$(env | cut -d= -f1 | grep -E "${filter:-.}" | sed 's/^/$/' | tr '\n' ' ')
  for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    name=$(basename "$template" .template)
    envsubst "$defined" <"$template" >"/etc/nginx/conf.d/$name"
    echo "rendered $template to /etc/nginx/conf.d/$name"
  done
  for script in /docker-entrypoint.d/*.sh; do
    [ -x "$script" ] || continue
    echo "running $script"
    "$script"
  done
fi
exec "$@"
