#!/usr/bin/env bash
# A fast S3 server for benchmarks: s3s-fs from crates.io over a directory, on
# 127.0.0.1, built once with two fixes the stock build needs to be fast:
# TCP_NODELAY on accepted connections (without it each GET on a reused
# connection waits ~40 ms: Nagle against delayed ACKs) and a 256 KiB instead
# of 4 KiB read buffer for object bodies. Not a faithful S3 (no conditional
# GET, keys are plain files): use it for raw limits, not correctness.
#
# Usage: scripts/s3sfs-start.sh PORT|auto DATADIR   (prints port=N last)
# Build cache: $MEDIAFS_BENCH_CACHE (default ~/.cache/mediafs-bench).
# Credentials: key "bench", secret "bench-secret". Stop: scripts/s3sfs-stop.sh DATADIR
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${1:?usage: $0 PORT|auto DATADIR}
DIR=$(realpath -m "${2:?usage: $0 PORT|auto DATADIR}")
CACHE=${MEDIAFS_BENCH_CACHE:-$HOME/.cache/mediafs-bench}
VERSION=0.14.1
SRC=$CACHE/s3s-fs-$VERSION
BIN=$SRC/target/release/s3s-fs

if [ ! -x "$BIN" ]; then
    echo "s3sfs-start: building s3s-fs $VERSION (once, into $CACHE)" >&2
    mkdir -p "$CACHE/fetch/src"
    # Let cargo download the published crate, then build it as its own project.
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ns3s-fs = "=%s"\n' \
        "$VERSION" >"$CACHE/fetch/Cargo.toml"
    echo 'fn main() {}' >"$CACHE/fetch/src/main.rs"
    (cd "$CACHE/fetch" && cargo fetch -q)
    crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "s3s-fs-$VERSION.crate" | head -1)
    rm -rf "$SRC"
    tar xzf "$crate" -C "$CACHE"
    sed -i 's/^\( *\)let conn = http_server.serve_connection(/\1let _ = socket.set_nodelay(true);\n&/' "$SRC/src/main.rs"
    sed -i 's/ReaderStream::with_capacity(file, 4096)/ReaderStream::with_capacity(file, 256 * 1024)/' "$SRC/src/s3.rs"
    grep -q set_nodelay "$SRC/src/main.rs" && grep -q '256 \* 1024' "$SRC/src/s3.rs" || {
        echo "s3sfs-start: the s3s-fs sources changed; the two fixes did not apply" >&2
        exit 1
    }
    (cd "$SRC" && cargo build -q --release --locked --features binary)
fi

[ "$PORT" = auto ] && PORT=$("$HERE/lib/free-port.sh")
mkdir -p "$DIR/data" "$DIR/run"
RUST_LOG=${RUST_LOG:-warn} setsid "$BIN" --host 127.0.0.1 --port "$PORT" \
    --access-key bench --secret-key bench-secret "$DIR/data" \
    </dev/null >"$DIR/run/s3s-fs.log" 2>&1 &
echo $! >"$DIR/run/s3s-fs.pid"
for _ in $(seq 1 100); do # an unauthenticated GET / answers 403 once it is up
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
curl -s -o /dev/null "http://127.0.0.1:$PORT/" || {
    echo "s3sfs-start: s3s-fs did not start; see $DIR/run/s3s-fs.log" >&2
    exit 1
}
echo "port=$PORT"
