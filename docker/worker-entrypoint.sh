#!/bin/sh
# Register the work pool and the deployments of prefect.yaml with the Prefect server, then run
# the given command (the worker). Both registrations are idempotent.
set -eu
cd /opt/pbf
prefect work-pool create pbf-process --type process 2>/dev/null || true
prefect --no-prompt deploy --all
exec "$@"
