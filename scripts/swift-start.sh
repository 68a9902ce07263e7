#!/usr/bin/env bash
# Start a single-node OpenStack Swift (Debian 12 packages) on 127.0.0.1 with
# tempauth and the s3api middleware: the S3 API (SigV4, path-style) and the
# native Swift API on one port. For tests and benchmarks only.
#
# Usage: scripts/swift-start.sh PORT|auto DATADIR
#   PORT      the proxy port; PORT+1..PORT+3 are the object, container and
#             account servers, PORT+4 memcached. "auto" picks free ports.
#   DATADIR   configuration, data, logs and PID files (created if missing).
# Prints the endpoint and keys; the last line is "port=PORT".
# Stop with scripts/swift-stop.sh DATADIR (kills only the PIDs recorded here).
#
# S3:    http://127.0.0.1:PORT  access key test:tester  secret testing  region us-east-1
# Swift: http://127.0.0.1:PORT/auth/v1.0  user test:tester  key testing
# Installs the Debian packages if missing (needs root then). Writes
# /etc/swift/swift.conf, which Swift always reads (same content for every
# instance, so several instances can run side by side).
set -euo pipefail
usage="usage: $0 PORT|auto DATADIR"
PORT=${1:?$usage}
DIR=$(realpath -m "${2:?$usage}")
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$PORT" = auto ]; then
    PORT=$("$HERE/lib/free-port.sh" 5)
fi
case "$PORT" in
    '' | *[!0-9]*) echo "swift-start: bad port $PORT; $usage" >&2; exit 2 ;;
esac
OBJ=$((PORT + 1)); CONT=$((PORT + 2)); ACC=$((PORT + 3)); MC=$((PORT + 4))
ME=$(id -un)

# --- install what is missing (idempotent) -----------------------------------
need=()
command -v swift-proxy-server >/dev/null 2>&1 || need+=(swift swift-proxy swift-account swift-container swift-object)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "swift-start: missing ${need[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "swift-start: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services (a system memcached, swift-*) from
    # starting: we run our own instances on our own ports.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    status=0
    apt-get update -q >/dev/null || status=$?
    if [ $status -eq 0 ]; then
        apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${need[@]}" >/dev/null || status=$?
    fi
    [ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $status -eq 0 ] || { echo "swift-start: apt-get failed ($status)" >&2; exit 1; }
fi

# --- refuse to start twice on one DATADIR -------------------------------------
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
for f in "$DIR"/run/*.pid; do
    if alive "$f"; then
        echo "swift-start: $DIR already has running servers ($f); stop them first" >&2
        exit 1
    fi
done

# --- configuration -------------------------------------------------------------
mkdir -p "$DIR"/{etc,srv/d1,run,log}
mkdir -p /etc/swift
tmp=$(mktemp /etc/swift/.swift.conf.XXXXXX)
cat >"$tmp" <<CONF
[swift-hash]
swift_hash_path_suffix = mediafs-test
swift_hash_path_prefix = mediafs-test
[storage-policy:0]
name = Policy-0
default = yes
CONF
chmod 644 "$tmp"
mv -f "$tmp" /etc/swift/swift.conf

common() { # $1 = port, $2 = workers
    cat <<CONF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $1
workers = $2
user = $ME
swift_dir = $DIR/etc
devices = $DIR/srv
mount_check = false
disable_fallocate = true
log_facility = LOG_LOCAL0
log_level = WARNING
CONF
}
server() { # $1 = name, $2 = port, $3 = workers
    common "$2" "$3"
    printf '[pipeline:main]\npipeline = %s-server\n[app:%s-server]\nuse = egg:swift#%s\n' "$1" "$1" "$1"
}
server object "$OBJ" 2 >"$DIR/etc/object-server.conf"
server container "$CONT" 1 >"$DIR/etc/container-server.conf"
server account "$ACC" 1 >"$DIR/etc/account-server.conf"
{
    common "$PORT" 2
    cat <<CONF
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
# S3 access key "test:tester", secret "testing"; Swift user test:tester, key testing
user_test_tester = testing .admin
storage_url_scheme = http
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MC
CONF
    for f in catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk copy slo dlo; do
        printf '[filter:%s]\nuse = egg:swift#%s\n' "$f" "${f//-/_}"
    done
} >"$DIR/etc/proxy-server.conf"

# Rings: 2^8 partitions, 1 replica, 1 device. Rebuilt when the ports change.
echo "$PORT" >"$DIR/etc/ports.new"
if ! cmp -s "$DIR/etc/ports.new" "$DIR/etc/ports" 2>/dev/null; then
    rm -f "$DIR"/etc/*.builder "$DIR"/etc/*.ring.gz
    rm -rf "$DIR/etc/backups"
fi
mv -f "$DIR/etc/ports.new" "$DIR/etc/ports"
(
    cd "$DIR/etc"
    for r in object:$OBJ container:$CONT account:$ACC; do
        n=${r%%:*}; p=${r##*:}
        if [ ! -f "$n.ring.gz" ]; then
            swift-ring-builder "$n.builder" create 8 1 1 >/dev/null
            swift-ring-builder "$n.builder" add "r1z1-127.0.0.1:$p/d1" 100 >/dev/null
            swift-ring-builder "$n.builder" rebalance >/dev/null
        fi
    done
)

# --- start ---------------------------------------------------------------------
# Each server in its own session and process group: Swift signals its whole
# process group on SIGTERM, which must not reach whoever started us. No
# terminal, no inherited stdin/stdout (a caller reading our output must see
# it end).
start() { # $1 = name, rest = command
    local name=$1; shift
    setsid "$@" </dev/null >"$DIR/log/$name.log" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
}
start memcached memcached -u "$ME" -l 127.0.0.1 -p "$MC" -U 0 -m 64
for s in object container account proxy; do
    start "$s" "swift-$s-server" "$DIR/etc/$s-server.conf"
done

fail() {
    echo "swift-start: $1; logs in $DIR/log:" >&2
    tail -n 20 "$DIR"/log/*.log >&2 || true
    "$HERE/swift-stop.sh" "$DIR" >&2 || true
    exit 1
}
auth() {
    curl -fs -o /dev/null --max-time 5 -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' \
        "http://127.0.0.1:$PORT/auth/v1.0"
}
# Up to 30 s for the proxy and a real auth round trip (memcached included).
ready=0
for _ in $(seq 1 150); do
    for f in "$DIR"/run/*.pid; do
        alive "$f" || fail "$(basename "$f" .pid) exited (port taken?)"
    done
    if auth; then ready=1; break; fi
    sleep 0.2
done
[ $ready = 1 ] || fail "swift did not answer within 30 s"

# The account database is made by the first container PUT. Many clients doing
# that first PUT at once (parallel tests) race on creating it and some get 503
# ("Please reduce your request rate" through s3api). Make it now, alone.
token=$(curl -fsS -D - -o /dev/null --max-time 5 -H 'X-Auth-User: test:tester' \
    -H 'X-Auth-Key: testing' "http://127.0.0.1:$PORT/auth/v1.0" |
    tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
ready=0
for _ in $(seq 1 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X PUT \
        -H "X-Auth-Token: $token" "http://127.0.0.1:$PORT/v1/AUTH_test/mediafs-warmup" || true)
    if [ "$code" = 201 ] || [ "$code" = 202 ]; then ready=1; break; fi
    sleep 0.2
done
[ $ready = 1 ] || fail "swift did not create its first container within 30 s (last status $code)"

cat <<INFO
S3 endpoint:   http://127.0.0.1:$PORT  (region us-east-1, path-style, SigV4)
S3 key/secret: test:tester / testing
Swift auth:    http://127.0.0.1:$PORT/auth/v1.0  user test:tester  key testing
Swift storage: http://127.0.0.1:$PORT/v1/AUTH_test
PID files:     $DIR/run/*.pid
port=$PORT
INFO
