# syntax=docker/dockerfile:1
# Build: docker build -t tokengate .
# Run:   docker run -p 4874:4874 -v tokengate-data:/data --stop-timeout 40 tokengate
#        (on `docker stop`, requests in flight get shutdown_timeout_secs, 30 s by default, to
#        finish: the stop timeout must be longer, or they are killed). Lint: hadolint Dockerfile.
# With PostgreSQL: docs/compose.yaml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config.example.toml ./
RUN cargo build --release --locked --bin tokengate \
    && cp target/release/tokengate /usr/local/bin/tokengate

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 tokengate \
    && useradd --system --uid 10001 --gid tokengate --home-dir /data --shell /usr/sbin/nologin tokengate \
    && mkdir -p /data && chown tokengate:tokengate /data
COPY --from=build /usr/local/bin/tokengate /usr/local/bin/tokengate
COPY config.example.toml /usr/share/doc/tokengate/config.example.toml
# TOKENGATE_TFA_KEY_FILE is the path of the key file, not a secret: the key stays in /data.
# hadolint ignore=DL3064
ENV TOKENGATE_LISTEN=0.0.0.0:4874 \
    TOKENGATE_DATABASE_URL=sqlite:///data/tokengate.db \
    TOKENGATE_TFA_KEY_FILE=/data/tokengate.key
# Numeric, so runtimes that check for a non-root user (Kubernetes runAsNonRoot) can tell.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 4874
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["tokengate", "probe"]
ENTRYPOINT ["tokengate"]
CMD ["serve"]
