# syntax=docker/dockerfile:1.7
# The hedge operator image. Build from the repository root:
#   docker buildx build --load -f docker/operator.Dockerfile -t hedge-operator:dev .

# Build stage: the workspace's rust-version (Cargo.toml) and the locked dependencies.
FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hedge-operator \
    && install -D -m 0755 target/release/hedge-operator /out/hedge-operator

# Runtime: glibc, libgcc, CA certificates and nothing else; runs as uid/gid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hedge-operator" \
      org.opencontainers.image.description="Kubernetes operator for hedge HedgeGroup resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/hedge-operator /usr/local/bin/hedge-operator
USER 65532:65532
# Metrics and the /healthz and /readyz probes.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hedge-operator"]
# The IPv6 wildcard (IPv6-only clusters too; falls back to 0.0.0.0 where IPv6 is off).
CMD ["--metrics-addr", "[::]:8080"]
