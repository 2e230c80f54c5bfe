# Build stage: the Rust toolchain, a release build of the zkgate binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin zkgate

# Runtime: slim Debian, the binary, the default configuration, a non-root user (uid and gid
# 10001). Run it with your configuration mounted, and a stop timeout longer than
# server.shutdown_timeout (docker's default 10 s would cut a drain short):
#   docker build -t zkgate .
#   docker run -d --name zkgate -p 8080:8080 --stop-timeout 40 \
#     -v /etc/zkgate/gateway.toml:/etc/zkgate/gateway.toml:ro -v zkgate-state:/var/lib/zkgate zkgate
#   docker kill -s HUP zkgate      # reload; USR2 upgrades in place
# Listen on 0.0.0.0 in a mounted configuration (the image's default file is rewritten so).
FROM debian:bookworm-slim
# Versions are not pinned: the image should take Debian's security updates when rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 zkgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin zkgate \
    && install -d -o zkgate -g zkgate /var/lib/zkgate
COPY --from=build /src/target/release/zkgate /usr/bin/zkgate
COPY gateway.toml /etc/zkgate/gateway.toml
# In a container the gateway must listen on all interfaces, not only on loopback.
RUN sed -i 's/^listen = \["127.0.0.1:8080"\]/listen = ["0.0.0.0:8080"]/' /etc/zkgate/gateway.toml
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9901/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/zkgate"]
CMD ["run", "-c", "/etc/zkgate/gateway.toml"]
