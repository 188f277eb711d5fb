# nginx with nginx-module-vts (virtual host traffic status), the compose stack's `nginx` service:
#
#   docker build -f otel/nginx/vts.Dockerfile -t audit-guard-nginx-vts:1.27.5 otel/nginx
#
# The official nginx image, plus the VTS module built as a dynamic module and loaded by
# otel/nginx/compose/nginx.conf (`load_module modules/ngx_http_vhost_traffic_status_module.so`).
# The configuration itself is bind-mounted by compose.yaml, not baked in.
#
# ABI. nginx loads a dynamic module only if it was compiled against the very same nginx release
# (`module "..." version 1027004 instead of 1027005`) with a matching module signature. So:
#   - the module is compiled from the nginx.org source of exactly the version the image runs
#     (both stages below use nginx:${NGINX_VERSION}; the build stage also checks `nginx -v`);
#   - with --with-compat, as the official packages are, which makes the signature independent of
#     the optional modules either side was configured with (PCRE and zlib must still be present,
#     as in the official build: they are part of the signature);
#   - the final stage runs `nginx -t` with the module loaded, so a mismatch fails the build, not
#     the container start.
# Bump NGINX_VERSION together with NGINX_SHA512 and the image tag in compose.yaml
# (tests/test_compose.py checks that they agree).

# nginx.org release of the base image; sha512 of nginx-1.27.5.tar.gz as listed by nginx's own
# packaging repository (github.com/nginx/pkg-oss, contrib/src/nginx/SHA512SUMS).
ARG NGINX_VERSION=1.27.5
ARG NGINX_SHA512=5130bc2ec08a962b631ceb741ecb3dc0d84423ca50afb713d9c52c13af1e1bf5e2b0be226936d6dfbc7c2a45b44726ba478a571c6032099bc8ece85fe015ccbc
# A released tag of github.com/vozlt/nginx-module-vts (v0.2.4: 2025-03-12, after its README added
# nginx 1.27.x to the tested versions). Newer tags exist (v0.2.7 at the time of writing); this one
# is pinned because its tarball checksum could be cross-checked independently: sha512 of GitHub's
# archive of the tag (archive/refs/tags/v0.2.4.tar.gz, 182587 bytes) as recorded by Gentoo
# (gentoo/gentoo, www-nginx/ngx-vts/Manifest). A bump needs the new tarball's sha512.
ARG VTS_VERSION=v0.2.4
ARG VTS_SHA512=89f21e7dfb85c0ddc266113543b8804289b53abd8bb24e2dc380957ee8d2a87958708df073815df4360feb79cdf0dcbe28cc9d10c8846f51004ff43296ddadd3

# ------------------------------------------------------------------------------------- build
# Same image as the final stage: same Debian release, compiler defaults and glibc as the nginx
# binary the module is loaded into.
FROM nginx:${NGINX_VERSION} AS build
ARG NGINX_VERSION
ARG NGINX_SHA512
ARG VTS_VERSION
ARG VTS_SHA512

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev libpcre2-dev make zlib1g-dev; \
    rm -rf /var/lib/apt/lists/*

WORKDIR /build
RUN set -eux; \
    nginx -v 2>&1 | grep -Fx "nginx version: nginx/${NGINX_VERSION}"; \
    nginx -V 2>&1 | grep -Fq -- "--with-compat"; \
    curl -fsSL --proto '=https' -o nginx.tar.gz \
        "https://nginx.org/download/nginx-${NGINX_VERSION}.tar.gz"; \
    echo "${NGINX_SHA512}  nginx.tar.gz" | sha512sum -c -; \
    curl -fsSL --proto '=https' -o vts.tar.gz \
        "https://github.com/vozlt/nginx-module-vts/archive/refs/tags/${VTS_VERSION}.tar.gz"; \
    echo "${VTS_SHA512}  vts.tar.gz" | sha512sum -c -; \
    mkdir nginx vts; \
    tar -xzf nginx.tar.gz -C nginx --strip-components=1; \
    tar -xzf vts.tar.gz -C vts --strip-components=1; \
    cd nginx; \
    ./configure --with-compat --add-dynamic-module=/build/vts; \
    make modules; \
    test -s objs/ngx_http_vhost_traffic_status_module.so

# ------------------------------------------------------------------------------------- final
FROM nginx:${NGINX_VERSION}

# /usr/lib/nginx/modules is where /etc/nginx/modules points in the official image.
COPY --from=build /build/nginx/objs/ngx_http_vhost_traffic_status_module.so /usr/lib/nginx/modules/

# This nginx accepts the module (version and signature are checked by load_module) and knows its
# directives.
RUN set -eux; \
    printf '%s\n' \
        'load_module modules/ngx_http_vhost_traffic_status_module.so;' \
        'events {}' \
        'http { vhost_traffic_status_zone; }' > /tmp/vts-check.conf; \
    nginx -t -c /tmp/vts-check.conf; \
    rm /tmp/vts-check.conf
