# The sample app used by the example manifests and the tests.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p mirrord-tests --bin sample-app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sample-app /usr/local/bin/sample-app
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sample-app"]
