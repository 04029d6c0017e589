# tchap-visio container image.
#   docker build -t tchap-visio .
#   docker run -v "$PWD/data:/data" -e TCHAP_VISIO_APPSERVICE__HOSTNAME=0.0.0.0 \
#     -e TCHAP_VISIO_SFU__SHARDS=2 -p 29330:29330 -p 7881:7881 -p 7882-7883:7882-7883/udp tchap-visio
# (one UDP port per media shard, from sfu.udp_port up)
# docker-compose.yml runs it next to Synapse and PostgreSQL; docs/admin.md explains both.

# ---- Build the meeting page (web/, TypeScript on livekit-client) ----
FROM node:20-bookworm AS web
WORKDIR /src
COPY web/package.json web/package-lock.json web/
RUN npm --prefix web ci
COPY web web
COPY scripts/build-web.sh scripts/
RUN npm --prefix web run build

# ---- Build the release binary (it embeds web/dist and refuses to build without it) ----
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# sqlx's compile-time checked queries, if any, read .sqlx/ instead of a database.
ENV SQLX_OFFLINE=true
# The whole context (minus .dockerignore): sqlx::migrate! embeds the migrations
# and other files may be embedded at compile time.
COPY . .
COPY --from=web /src/web/dist web/dist
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tchap-visio \
 && install -D -m 0755 target/release/tchap-visio /out/tchap-visio

# ---- Runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# UID/GID 991 by default: the same as the Synapse image's user, so that a Synapse
# container can read the registration this one writes (mode 0600) into a shared
# directory.
ARG APP_UID=991
ARG APP_GID=991
RUN groupadd --system --gid "${APP_GID}" tchapvisio \
 && useradd --system --uid "${APP_UID}" --gid tchapvisio \
      --home-dir /data --no-create-home --shell /usr/sbin/nologin tchapvisio \
 && mkdir /data \
 && chown tchapvisio:tchapvisio /data

COPY --from=builder /out/tchap-visio /usr/local/bin/tchap-visio

USER tchapvisio
# Working directory /: the example config's relative SQLite URI
# (sqlite://data/tchap-visio.db) then lands in the /data volume.
WORKDIR /
VOLUME /data

# HTTP (appservice API, join page, /rtc, /health, /metrics); ICE over TCP; media (UDP,
# one port per shard: two here, as docker-compose.yml sets sfu.shards).
EXPOSE 29330 7881 7882/udp 7883/udp

ENTRYPOINT ["tchap-visio"]
CMD ["run", "-c", "/data/config.yaml"]
