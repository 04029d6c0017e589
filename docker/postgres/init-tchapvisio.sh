#!/bin/sh
# Creates tchap-visio's role and database next to Synapse's (the image's
# POSTGRES_USER/POSTGRES_DB). The postgres image runs this once, when the data
# volume is initialised; it has no effect on an existing volume.
#
# The password comes from VISIO_DB_PASSWORD (set in docker-compose.yml) and is
# passed to psql as a variable, so it is quoted as an SQL literal.
set -e

: "${VISIO_DB_PASSWORD:?VISIO_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v visio_password="$VISIO_DB_PASSWORD" <<'EOSQL'
CREATE USER tchapvisio WITH PASSWORD :'visio_password';
CREATE DATABASE tchapvisio OWNER tchapvisio ENCODING 'UTF8';
EOSQL
