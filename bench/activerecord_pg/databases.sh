#!/bin/sh
# The databases of Active Record's PostgreSQL suite (bench/real.sh postgresql), made as
# docs/databases.md describes. `template`, once per host before its workers start (gorgon-rs'
# before_creating_workers): an empty UTF-8 database, as the suite's own `rake
# db:postgresql:build` makes them. `worker`, in each worker before its first file
# (before_start): the worker's pair, copied from its host's template. The names are the
# suite's, activerecord_unittest and activerecord_unittest2, followed by the host
# (GORGON_HOST: the listeners of one machine share its server) and the worker
# (TEST_ENV_NUMBER), each after an underscore, as test/config.yml (activerecord_pg/config.yml)
# names them: activerecord_unittest, activerecord_unittest_2, activerecord_unittest_one_2, ...
# The suite loads its schema itself, in every process (all its tables, `force: true`), so the
# template stays empty and a database that exists is kept as it is, from run to run, as a warm
# host keeps its databases: dropping one makes PostgreSQL take a checkpoint, which on a busy
# server costs seconds (docs/benchmarks.md).
# Usage: databases.sh template|worker   (the project's server: 127.0.0.1:GORGON_TEST_PGPORT,
# default 54329, user postgres, as scripts/lib/prerequisites.sh starts it)
set -eu
export PGHOST=127.0.0.1 PGPORT="${GORGON_TEST_PGPORT:-54329}" PGUSER=postgres
export PGOPTIONS="-c client_min_messages=warning"
host=${GORGON_HOST:+_$GORGON_HOST}
template=activerecord_unittest_template$host

# exists DATABASE: whether the server has it.
exists() {
    [ "$(psql -Atc "select 1 from pg_database where datname = '$1'" postgres)" = 1 ]
}

case ${1:-} in
template)
    exists "$template" || createdb -E UTF8 -T template0 "$template"
    ;;
worker)
    tag=$host${TEST_ENV_NUMBER:+_$TEST_ENV_NUMBER}
    for database in activerecord_unittest activerecord_unittest2; do
        exists "$database$tag" || createdb -T "$template" "$database$tag"
    done
    ;;
*)
    echo "usage: $0 template|worker" >&2
    exit 2
    ;;
esac
