#!/bin/sh
# The official image's `healthcheck.sh --connect --innodb_initialized`, reduced to
# what docker-compose.yml asks: the server takes a login over TCP and InnoDB is up.
exec mariadb --defaults-extra-file=/var/lib/mysql/.my-healthcheck.cnf --skip-column-names \
    -e "SELECT 1 FROM information_schema.ENGINES WHERE ENGINE='InnoDB' AND SUPPORT IN ('YES','DEFAULT')" \
    | grep -q 1
