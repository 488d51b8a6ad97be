#!/bin/sh
# Entry point of the Redis container (compose and k8s): render the ACL from the mounted
# template and the password variables, drop those variables, then become redis-server.
#   start.sh [extra redis-server arguments]
set -eu
here=/usr/local/etc/redis
acl=${REDIS_ACL_OUTPUT:-/tmp/users.acl}

# Through sh: a ConfigMap or a checkout without exec bits still works.
sh "$here/render-acl.sh" "$here/users.acl" "$acl"
# redis-server needs only the hashes: keep the plaintext passwords out of its environment.
for name in $(env | sed -n 's/^\(REDIS_[A-Z0-9_]*_PASSWORD\)=.*/\1/p'); do
    unset "$name"
done
exec redis-server "$here/redis.conf" --aclfile "$acl" "$@"
