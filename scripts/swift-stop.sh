#!/usr/bin/env bash
# Stop the servers that scripts/swift-start.sh started in DATADIR: only the
# PIDs recorded there, and only while they still are those programs.
# Usage: scripts/swift-stop.sh DATADIR
set -uo pipefail
DIR=$(realpath -m "${1:?usage: $0 DATADIR}")

ours() { # $1 = pid, $2 = name: is it still the process we started?
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    case "$2" in
        memcached) [[ "$cmd" == *memcached* ]] ;;
        *) [[ "$cmd" == *"$DIR/etc/$2-server.conf"* ]] ;;
    esac
}

pids=()
shopt -s nullglob
for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .pid)
    pid=$(cat "$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null && echo "stopped $name ($pid)"
        pids+=("$pid")
    fi
    rm -f "$f"
done
# Up to 5 s to exit, then SIGKILL: the server and its workers, which are the
# process group swift-start.sh created for it (group id = its PID).
for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
        kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
done
exit 0
