# mirrord-proxy: the init container (iptables) and the sidecar, one image.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p mirrord-proxy --bin mirrord-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mirrord-proxy /usr/local/bin/mirrord-proxy
# The sidecar runs as this user; the init container is made root by its
# securityContext, for iptables.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mirrord-proxy"]
