#!/bin/sh
# First start on an empty /var/lib/mysql: create the system tables, then the
# database and user the environment names, as the official image does. Later
# starts (the named volume kept across `down`/`up`) go straight to the server.
set -eu
DATADIR=/var/lib/mysql
if [ ! -d "$DATADIR/mysql" ]; then
    : "${MARIADB_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD must be set (see .env.example)}"
    mariadb-install-db --datadir="$DATADIR" --skip-test-db \
        --auth-root-authentication-method=normal >/dev/null
    mariadbd --datadir="$DATADIR" --skip-networking --socket=/run/mysqld/init.sock &
    pid=$!
    for _ in $(seq 60); do
        mariadb --socket=/run/mysqld/init.sock --user=root -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
    # The health check's own login, with a random password only this volume knows.
    health=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '[client]\nuser=healthcheck\npassword=%s\nprotocol=tcp\nhost=127.0.0.1\n' \
        "$health" >"$DATADIR/.my-healthcheck.cnf"
    {
        echo "CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY '$health';"
        echo "CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY '$health';"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$MARIADB_ROOT_PASSWORD';"
        if [ -n "${MARIADB_DATABASE:-}" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
        fi
        if [ -n "${MARIADB_USER:-}" ]; then
            echo "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '${MARIADB_PASSWORD:?}';"
            [ -n "${MARIADB_DATABASE:-}" ] && \
                echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
        fi
    } | mariadb --socket=/run/mysqld/init.sock --user=root
    kill "$pid"
    wait "$pid" || true
fi
# skip-name-resolve: clients are containers, known by address only.
exec "$@" --datadir="$DATADIR" --bind-address=0.0.0.0 --port=3306 --skip-name-resolve
