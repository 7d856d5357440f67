#!/bin/sh
# janitor-env COMMAND [ARG...]: runs COMMAND with JANITOR_REDIS_URL built from a Redis password file.
#
# Installed in the image as /usr/local/bin/janitor-env. docker-compose.yml makes it the entrypoint of every
# service that talks to Redis, and its healthchecks use it, so the password the redis service generated (in
# the redis-secret volume, REDIS_PASSWORD_FILE) reaches them through the environment only: never a command
# line, the compose file or .env. It overrides a JANITOR_REDIS_URL from .env. By hand:
#   docker compose exec worker janitor-env janitor report
# Without REDIS_PASSWORD_FILE it changes nothing.
set -eu

if [ -n "${REDIS_PASSWORD_FILE:-}" ]; then
    if [ ! -r "$REDIS_PASSWORD_FILE" ]; then
        echo "janitor-env: cannot read the Redis password file $REDIS_PASSWORD_FILE" >&2
        exit 78
    fi
    password=$(cat "$REDIS_PASSWORD_FILE")
    case "$password" in
        "" | *[!A-Za-z0-9._~-]*)
            # Only characters that need no percent-encoding in a URL; the value is not echoed.
            echo "janitor-env: $REDIS_PASSWORD_FILE must hold one password of letters, digits and ._~- only" >&2
            exit 78
            ;;
    esac
    JANITOR_REDIS_URL="redis://:${password}@${REDIS_HOST:-redis}:${REDIS_PORT:-6379}/${REDIS_DB:-0}"
    export JANITOR_REDIS_URL
    unset password
fi
exec "$@"
