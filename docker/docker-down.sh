#!/usr/bin/env bash
# Stops everything docker-up.sh started (all profiles). Volumes are kept unless --volumes.
set -euo pipefail
cd "$(dirname "$0")"
source ./compose-files.sh
volumes=()
for arg in "$@"; do
  case "$arg" in
    --volumes) volumes=(--volumes) ;;
    *) echo "usage: $0 [--volumes]" >&2; exit 2 ;;
  esac
done
docker compose "${COMPOSE_ARGS[@]}" --profile monitoring down --remove-orphans ${volumes[@]+"${volumes[@]}"}
