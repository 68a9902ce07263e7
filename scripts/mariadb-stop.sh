#!/usr/bin/env bash
# Stop the MariaDB that scripts/mariadb-start.sh started in DATADIR, by the PID
# it recorded (never by name): SIGTERM, then SIGKILL after 30 s.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 DATADIR" >&2
    exit 2
fi
datadir=$(realpath -m "$1")
pidfile=$datadir/server.pid
[ -f "$pidfile" ] || { echo "mariadb-stop: no server recorded in $datadir"; exit 0; }
pid=$(cat "$pidfile")
# Only our own mariadbd: the PID must still run a mariadbd on this data directory.
if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--datadir=$datadir/data"; then
    echo "mariadb-stop: server $pid is not running"
    rm -f "$pidfile"
    exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "mariadb-stop: $pid still running after 30 s; SIGKILL" >&2
    kill -KILL "$pid"
fi
rm -f "$pidfile"
echo "mariadb-stop: stopped $pid"
