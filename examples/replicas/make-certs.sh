#!/usr/bin/env bash
# Makes what compose.yaml needs, once, in this folder: a CA and the
# certificates Redis and PostgreSQL present (certs/), the replicas' shared
# session key and the two passwords (secrets/). Nothing is overwritten.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p certs secrets
chmod 0700 secrets

if [ ! -f certs/ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout certs/ca.key -out certs/ca.pem -days 365 -subj "/CN=portcullis replicas CA"
fi
for host in redis db; do
    [ -f "certs/$host.pem" ] && continue
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "certs/$host.key" -out "certs/$host.csr" -subj "/CN=$host"
    printf 'subjectAltName=DNS:%s\n' "$host" > "certs/$host.ext"
    openssl x509 -req -in "certs/$host.csr" -CA certs/ca.pem -CAkey certs/ca.key \
        -CAcreateserial -out "certs/$host.pem" -days 365 -extfile "certs/$host.ext"
    rm "certs/$host.csr" "certs/$host.ext"
done
# The servers read their keys as their own users (redis 999, postgres 999);
# the CA's key stays here, mounted nowhere.
chmod 0755 certs
chmod 0644 certs/ca.pem certs/redis.pem certs/db.pem
chmod 0600 certs/ca.key certs/redis.key certs/db.key
if [ "$(id -u)" = 0 ]; then
    chown 999:999 certs/redis.key certs/db.key
else
    echo "as root, run: chown 999:999 certs/redis.key certs/db.key (the servers' users)"
fi

[ -f secrets/session.key ] || openssl rand -hex 32 > secrets/session.key
[ -f secrets/redis.password ] || openssl rand -hex 24 > secrets/redis.password
[ -f secrets/db.password ] || openssl rand -hex 24 > secrets/db.password
# The folder is its owner's alone (0700: no other user of this host reaches
# the files); each file is mounted into the containers that use it, whose
# users (65534, 999) read it there.
chmod 0644 secrets/*
echo "certs/ and secrets/ are ready: docker compose up"
