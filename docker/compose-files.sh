# The compose file set, shared by docker-up.sh and docker-down.sh (sourced from docker/).
# docker/ is the project directory, so relative paths in the fragments resolve against it; the
# root override is passed explicitly because compose only merges an override found beside the
# first file. Versions come from ../scripts/versions.env, the file the native stack reads too.
COMPOSE_ARGS=(
  --project-name "${COMPOSE_PROJECT_NAME:-ngsiflow}"
  --project-directory .
  --env-file ../scripts/versions.env
  --env-file .env
  -f docker-compose.kafka.yml
  -f docker-compose.postgis.yml
  -f docker-compose.ngsiflow.yml
  -f docker-compose.monitoring.yml
  -f ../docker-compose.override.yml
)
