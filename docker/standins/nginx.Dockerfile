# A local stand-in for the official `nginx` image, from Debian's nginx package, for machines that cannot reach
# Docker Hub (docker/smoke.sh builds it). Like the official image it reads /etc/nginx/conf.d/*.conf (where
# compose.yaml mounts docker/nginx.conf) and runs in the foreground.
#   docker build --build-arg BASE_IMAGE=<a Debian bookworm image> -f docker/standins/nginx.Dockerfile docker/standins
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
