# syntax=docker/dockerfile:1.7
# The hedge demo member image (the example workload). Build from the repository root:
#   docker build -f docker/demo.Dockerfile -t hedge-demo:dev .

# Build stage: the workspace's rust-version (Cargo.toml) and the locked dependencies.
FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hedge-demo \
    && install -D -m 0755 target/release/hedge-demo /out/hedge-demo

# Runtime: glibc, libgcc, CA certificates and nothing else; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hedge-demo" \
      org.opencontainers.image.description="Example hedge group member" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/hedge-demo /usr/local/bin/hedge-demo
USER 65532:65532
# The peer transport (HEDGE_PEER_PORT's default) and the HTTP API (HEDGE_DEMO_HTTP_ADDR's).
EXPOSE 7946 8081
ENTRYPOINT ["/usr/local/bin/hedge-demo"]
# One member of a group configured from the environment (`hedge-demo local` runs a group in-process).
CMD ["member"]
