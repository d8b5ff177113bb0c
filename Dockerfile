# A minimal image of the static feature-agent binary.
#   docker build -t feature-agent:0.1.0 .
# Stage 1 builds the eBPF object (rust-src + bpf-linker, as scripts/setup.sh does) and a fully
# static binary for x86_64-unknown-linux-musl (musl resolves DNS itself, so the binary needs no
# libc or NSS files at run time). Stage 2 is the binary alone on distroless/static (CA
# certificates, /etc/passwd, nothing else: no shell, no package manager).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add rust-src \
 && rustup target add x86_64-unknown-linux-musl \
 && cargo install bpf-linker --version 0.10.0 --locked
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package agent --bin feature-agent --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/feature-agent /feature-agent

FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /feature-agent /feature-agent
# Root inside the container, with only the capabilities the DaemonSet adds (deploy/base);
# the migrate Job runs it as a non-root user.
ENTRYPOINT ["/feature-agent"]
CMD ["run"]
