#!/usr/bin/env bash
# Print a TCP port P on 127.0.0.1 such that P .. P+COUNT-1 are all free.
# Usage: free-port.sh [COUNT]     (default 1)
# "Free" means nothing listens there now; a caller that starts servers on the
# ports should still fail cleanly if one is taken in between.
set -euo pipefail
COUNT=${1:-1}

listening() {   # the ports something listens on, one per line
    if command -v ss >/dev/null 2>&1; then
        ss -Htln 2>/dev/null | awk '{n = split($4, a, ":"); print a[n]}'
    else
        awk 'NR > 1 && $4 == "0A" {split($2, a, ":"); print strtonum("0x" a[2])}' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null
    fi
}

busy=" $(listening | sort -un | tr '\n' ' ') "
for _ in $(seq 1 200); do
    base=$(( 20000 + (RANDOM * 32768 + RANDOM) % 30000 ))
    ok=1
    for ((p = base; p < base + COUNT; p++)); do
        case "$busy" in *" $p "*) ok=0; break ;; esac
    done
    if [ "$ok" = 1 ]; then
        echo "$base"
        exit 0
    fi
done
echo "free-port.sh: no $COUNT free consecutive ports found" >&2
exit 1
