# Warren's images: `--target gateway` and `--target consumer`.
# Dependencies are compiled in a layer of their own (cargo-chef), so a source change rebuilds only
# Warren's crates; the runtime images hold the binary and CA certificates, no toolchain, and run
# as a non-root user. The binaries ship without their line tables (most of their size); the
# `gateway-debug` and `consumer-debug` targets are the same images with the symbols added back
# (found through the binary's .gnu_debuglink), for a debugger or a symbolised backtrace.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.71
WORKDIR /app

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY shared-types shared-types
COPY service-runtime service-runtime
COPY gateway gateway
COPY consumer consumer
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p gateway -p consumer
COPY Cargo.toml Cargo.lock openapi.json ./
COPY shared-types shared-types
COPY service-runtime service-runtime
COPY gateway gateway
COPY consumer consumer
COPY migrations migrations
RUN cargo build --release --locked -p gateway -p consumer \
    && for bin in gateway consumer; do \
         objcopy --only-keep-debug "target/release/$bin" "target/release/$bin.debug" \
         && objcopy --strip-debug --add-gnu-debuglink="target/release/$bin.debug" "target/release/$bin" \
         || exit 1; \
       done

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin warren \
    && mkdir /keys && chown 10001 /keys && chmod 700 /keys
# /keys: a compose stack's generated keys (`gateway keys init`); a named volume mounted there
# starts as a copy of this folder, so it belongs to the service user.
USER 10001

FROM runtime AS gateway
COPY --from=builder /app/target/release/gateway /usr/local/bin/gateway
ENV WARREN_GATEWAY_ADDR=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["gateway", "healthcheck"]
ENTRYPOINT ["gateway"]

FROM runtime AS consumer
COPY --from=builder /app/target/release/consumer /usr/local/bin/consumer
ENV WARREN_CONSUMER_ADDR=0.0.0.0:8082
EXPOSE 8082
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 CMD ["consumer", "healthcheck"]
ENTRYPOINT ["consumer"]

FROM gateway AS gateway-debug
COPY --from=builder /app/target/release/gateway.debug /usr/local/bin/gateway.debug

FROM consumer AS consumer-debug
COPY --from=builder /app/target/release/consumer.debug /usr/local/bin/consumer.debug
