# syntax=docker/dockerfile:1.7
# depot-worker (and depot-admin, for one-off maintenance from a worker pod).
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t depot-worker .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# git2 (https) and lapin link OpenSSL; libgit2 itself is vendored.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p depot-worker -p depot-admin \
    && install -D -m 0755 target/release/depot-worker /out/depot-worker \
    && install -D -m 0755 target/release/depot-admin /out/depot-admin

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    # git: housekeeping of hosted repositories (repack, pack-refs, prune);
    # the worker refuses to start without it.
    && apt-get install -y --no-install-recommends ca-certificates libssl3 git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 depot \
    && useradd --system --uid 10001 --gid depot --no-create-home --shell /usr/sbin/nologin depot \
    # storage.root: a named volume mounted here starts owned by depot.
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/depot/repos
COPY --from=build /out/depot-worker /out/depot-admin /usr/local/bin/
ENV DEPOT__STORAGE__ROOT=/var/lib/depot/repos \
    DEPOT__WORKER__METRICS_LISTEN=0.0.0.0:9090 \
    DEPOT__TELEMETRY__FORMAT=json
VOLUME ["/var/lib/depot/repos"]
# The admin port: /metrics, /healthz, /readyz.
EXPOSE 9090
USER 10001:10001
# SIGTERM: stop consuming, finish or release running syncs within
# worker.grace_seconds, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["depot-worker"]
