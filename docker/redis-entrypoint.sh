#!/bin/sh
# Entrypoint of the redis service in docker-compose.yml (mounted read-only, run with /bin/sh).
#
# First start: a random password (32 bytes from /dev/urandom as 64 hex digits) is written to the redis-secret
# volume. Every start: it goes into a config file only the redis user can read, which redis-server gets as its
# first argument, so the password is on no command line (`ps`) and in no file of the project. Then the image's
# own entrypoint runs, which drops to the redis user.
#
# The password file is root:10001, mode 0640: 10001 is the janitor group of the endpoint-janitor image, whose
# services (worker, beat, Flower) mount the volume read-only and build JANITOR_REDIS_URL from it (janitor-env).
# Delete the volume (`docker compose down -v` deletes the data too) to get a new password.
set -eu

secret_dir=/run/redis-secret
password_file="$secret_dir/password"
config_dir=/usr/local/etc/janitor-redis
config="$config_dir/redis.conf"
janitor_gid=10001

umask 077
if [ ! -s "$password_file" ]; then
    password=$(head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
    if [ "${#password}" -ne 64 ]; then
        echo "redis-entrypoint: could not make a password from /dev/urandom" >&2
        exit 1
    fi
    printf '%s\n' "$password" >"$password_file.new"
    mv -f "$password_file.new" "$password_file"
fi
password=$(cat "$password_file")
case "$password" in
    "" | *[!A-Za-z0-9._~-]*)
        echo "redis-entrypoint: $password_file must hold one password of letters, digits and ._~- only" >&2
        exit 1
        ;;
esac
chown "root:$janitor_gid" "$secret_dir" "$password_file"
chmod 0750 "$secret_dir"
chmod 0640 "$password_file"

mkdir -p "$config_dir"
printf 'requirepass "%s"\n' "$password" >"$config.new"
mv -f "$config.new" "$config"
chown redis:redis "$config_dir" "$config"
chmod 0700 "$config_dir"
chmod 0600 "$config"
unset password

# redis-server takes a config file as its first argument; the options from `command:` follow it.
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server "$config" "$@"
fi
exec docker-entrypoint.sh "$@"
