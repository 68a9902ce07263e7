#!/usr/bin/env bash
# Stop the s3s-fs that scripts/s3sfs-start.sh started in DATADIR (by its PID).
set -euo pipefail
f=${1:?usage: $0 DATADIR}/run/s3s-fs.pid
[ -f "$f" ] || exit 0
pid=$(cat "$f")
kill "$pid" 2>/dev/null || true
for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -9 "$pid" 2>/dev/null || true
rm -f "$f"
