#!/bin/sh
# Render the ACL template (users.acl) into a file redis-server can load:
#   render-acl.sh TEMPLATE OUTPUT
# Comment and blank lines are dropped (Redis ACL files allow neither); every @NAME@ becomes
# the SHA-256 (hex) of the password in environment variable NAME, which must be set and
# non-empty. Only hashes reach the output, which is created mode 0600. POSIX sh + sed +
# sha256sum: runs in the redis:7.2-alpine image (busybox) and on any Linux host.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: render-acl.sh TEMPLATE OUTPUT" >&2
    exit 2
fi
template=$1
output=$2

if [ ! -r "$template" ]; then
    echo "render-acl: cannot read template $template" >&2
    exit 1
fi
# Comment and blank lines go first, so placeholders named in comments do not count.
strip_comments() { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$template"; }

sed_args=""
for name in $(strip_comments | grep -o '@[A-Z0-9_]*@' | tr -d @ | sort -u); do
    # $name matched [A-Z0-9_]* above, so this eval only reads a variable.
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "render-acl: environment variable $name is not set or empty" >&2
        exit 1
    fi
    hash=$(printf '%s' "$value" | sha256sum | cut -d ' ' -f 1)
    sed_args="$sed_args -e s/@$name@/$hash/g"
done

umask 077
# $sed_args is deliberately split into words: it holds only -e s/@NAME@/hex/g pairs.
# shellcheck disable=SC2086
strip_comments | sed $sed_args >"$output.tmp"
mv "$output.tmp" "$output"
