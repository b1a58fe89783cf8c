# mailroom's controller image: built with the pinned toolchain, run from a
# distroless base as a non-root user, the binary only.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mailroom

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mailroom /usr/local/bin/mailroom
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mailroom"]
CMD ["controller"]
