FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p mirrord-injector --bin mirrord-injector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mirrord-injector /usr/local/bin/mirrord-injector
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mirrord-injector"]
