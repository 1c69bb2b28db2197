# syntax=docker/dockerfile:1.7
# depot-gateway (and depot-admin, which the migrate Job/service runs).
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t depot-gateway .

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
    cargo build --release --locked -p depot-gateway -p depot-admin \
    && install -D -m 0755 target/release/depot-gateway /out/depot-gateway \
    && install -D -m 0755 target/release/depot-admin /out/depot-admin

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 depot \
    && useradd --system --uid 10001 --gid depot --no-create-home --shell /usr/sbin/nologin depot
COPY --from=build /out/depot-gateway /out/depot-admin /usr/local/bin/
# Production settings come from DEPOT__* variables (see docs/operations.md);
# these are the ones every container needs.
ENV DEPOT__GATEWAY__LISTEN=0.0.0.0:8080 \
    DEPOT__TELEMETRY__FORMAT=json
EXPOSE 8080
USER 10001:10001
ENTRYPOINT ["depot-gateway"]
