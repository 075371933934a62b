#!/bin/bash
# Runs once, when the influxdb:2.7 container initialises its data volume (the image runs
# /docker-entrypoint-initdb.d/*.sh after `influx setup`, with the CLI already configured with the
# admin token and DOCKER_INFLUXDB_INIT_BUCKET_ID exported).
#
# Maps the InfluxQL database "<bucket>" (retention policy "autogen", the default) to the bucket, so
# Grafana's InfluxQL data source (and any InfluxQL client) can read it through the v1-compatible
# /query API. (2.7 also answers for a bucket without a mapping through a read-only
# "virtual" mapping of the same name; an explicit mapping overrides it and survives a bucket rename.)
set -euo pipefail

db="${DOCKER_INFLUXDB_INIT_BUCKET:?}"
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID:?}"

influx v1 dbrp create --db "$db" --rp autogen --bucket-id "$bucket_id" --default
echo "init-dbrp: InfluxQL database $db (rp autogen) -> bucket $bucket_id"
