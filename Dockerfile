# endpoint-janitor: one image for the worker, beat, Flower and the simulator (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The code is owned by root and read-only for the service user: a compromised worker cannot change it.
RUN groupadd --system --gid 10001 janitor \
    && useradd --system --uid 10001 --gid janitor --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin janitor \
    && mkdir -p /data \
    && chown janitor:janitor /data

# .dockerignore lets in only pyproject.toml, README.md, worker/, config/ and docker/janitor-env.sh (never a .env
# with the API key).
COPY . /app
# janitor-env builds JANITOR_REDIS_URL from the password file the compose redis service generates (see
# docker-compose.yml): the services run under it, and so does `docker compose exec worker janitor-env janitor ...`.
RUN pip install . \
    && install -m 0755 /app/docker/janitor-env.sh /usr/local/bin/janitor-env \
    && rm -rf /app/build /app/*.egg-info /app/docker

USER janitor

# Beat keeps its schedule state here (a named volume in docker-compose.yml).
VOLUME ["/data"]

CMD ["celery", "-A", "worker", "worker", "-l", "INFO", "--pool", "threads", "-c", "16", "-Q", "janitor"]
