#!/bin/sh
# Entry point of the ecoflow-collector image: `docker run IMAGE [COMMAND ARGS...]` runs
# `ecoflow-collector COMMAND ARGS...` (default: `run`).
#
# docker compose passes a blank .env entry as an empty variable. For the collector an empty value is
# a value (an empty access key, a port ""), not "not configured", so empty ECOFLOW_COLLECTOR_*
# variables are dropped first: the collector then says which setting is missing.
set -eu
for name in $(env | sed -n 's/^\(ECOFLOW_COLLECTOR_[A-Za-z0-9_]*\)=$/\1/p'); do
  unset "$name"
done
exec ecoflow-collector "$@"
