#!/usr/bin/env bash
# Start a throwaway MariaDB for tests: scripts/mariadb-start.sh PORT DATADIR
#
# Installs Debian's mariadb-server if it is missing, initialises DATADIR (any
# previous content is removed), starts mariadbd on 127.0.0.1:PORT and on the
# socket DATADIR/mysqld.sock, records its PID in DATADIR/server.pid, and creates
# a database with Magento's media tables and a user with a password:
#
#   database  $MEDIAFS_TEST_DB       (default: magento)
#   user      $MEDIAFS_TEST_USER     (default: mediafs; on 127.0.0.1 and localhost,
#                                     with every privilege, for per-test databases)
#   password  $MEDIAFS_TEST_PASSWORD (default: mediafs-test-pw)
#
# Stop it with scripts/mariadb-stop.sh DATADIR (by that PID only). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ]; then
    echo "usage: $0 PORT DATADIR" >&2
    exit 2
fi
port=$1
datadir=$(realpath -m "$2")
db=${MEDIAFS_TEST_DB:-magento}
user=${MEDIAFS_TEST_USER:-mediafs}
password=${MEDIAFS_TEST_PASSWORD:-mediafs-test-pw}
schema=$PWD/scripts/magento-media-schema.sql

scripts/install-mariadb

# A server left behind in this data directory (a killed test run) goes first.
scripts/mariadb-stop.sh "$datadir" >/dev/null 2>&1 || true
rm -rf "$datadir"
mkdir -p "$datadir"
sock=$datadir/mysqld.sock

mariadb-install-db --no-defaults --user=root --datadir="$datadir/data" \
    --auth-root-authentication-method=socket --skip-test-db \
    >"$datadir/install.log" 2>&1 || {
    echo "mariadb-start: mariadb-install-db failed:" >&2
    cat "$datadir/install.log" >&2
    exit 1
}

# 16M max_allowed_packet (the MariaDB default, stated so tests can rely on it).
# Durability is traded for speed: this server holds test data only.
mariadbd --no-defaults --user=root --datadir="$datadir/data" \
    --bind-address=127.0.0.1 --port="$port" --socket="$sock" \
    --pid-file="$datadir/mariadbd.pid" --log-error="$datadir/error.log" \
    --skip-name-resolve --max-allowed-packet=16M --max-connections=500 \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=256M \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --sync-binlog=0 \
    </dev/null >/dev/null 2>&1 &
echo $! >"$datadir/server.pid"

for _ in $(seq 1 300); do
    if mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$(cat "$datadir/server.pid")" 2>/dev/null; then
        echo "mariadb-start: mariadbd exited; its log:" >&2
        cat "$datadir/error.log" >&2
        exit 1
    fi
    sleep 0.1
done
mariadb-admin --no-defaults --socket="$sock" -uroot ping >/dev/null

sql() { mariadb --no-defaults --socket="$sock" -uroot "$@"; }
sql <<SQL
CREATE DATABASE \`$db\`;
CREATE USER '$user'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER '$user'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON *.* TO '$user'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$user'@'localhost';
SQL
sql "$db" <"$schema"
echo "mariadb-start: mariadbd (pid $(cat "$datadir/server.pid")) on 127.0.0.1:$port and $sock, database $db, user $user"
