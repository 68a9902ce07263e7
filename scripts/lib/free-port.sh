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

# Stay out of the kernel's ephemeral range: outgoing connections take ports
# there without listening, so `ss -l` cannot see them and a server started
# on one fails with "Address already in use".
read -r eph_lo eph_hi < /proc/sys/net/ipv4/ip_local_port_range || { eph_lo=32768; eph_hi=60999; }
if [ "$eph_lo" -ge 12000 ]; then
    lo=10000 span=$(( eph_lo - 10000 - COUNT ))
else
    lo=$(( eph_hi + 1 )) span=$(( 65535 - eph_hi - COUNT ))
fi

busy=" $(listening | sort -un | tr '\n' ' ') "
for _ in $(seq 1 200); do
    base=$(( lo + (RANDOM * 32768 + RANDOM) % span ))
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
