# A local stand-in for the official `postgres` image, from Debian's own PostgreSQL package, for machines that
# cannot reach Docker Hub (the container smoke test builds it: docker/smoke.sh). It honours what compose.yaml
# uses of the official image: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB on the first start, the data in
# /var/lib/postgresql/data, port 5432 with password authentication, and pg_isready for the health check.
#   docker build --build-arg BASE_IMAGE=<a Debian bookworm image> -f docker/standins/postgres.Dockerfile docker/standins
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["bash", "/usr/local/bin/postgres-entrypoint.sh"]
