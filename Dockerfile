# Build stage: the Rust toolchain, a release build of the zkgate binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin zkgate

# Runtime: slim Debian, the binary, the default configuration, a non-root user.
FROM debian:bookworm-slim
# Versions are not pinned: the image should take Debian's security updates when rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin zkgate \
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
