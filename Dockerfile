# A minimal image of the static feature-agent binary.
#   docker build -t feature-agent:0.2.0 .
# Stage 1 installs what scripts/setup.sh installs for building (rust-src and bpf-linker, for
# the eBPF object) and runs `cargo xtask build-static`: a static-pie binary (glibc >= 2.34 has
# the files and dns name services built in, so it needs no shared library at run time). CI runs
# the same command and then the binary alone in an empty root directory (`cargo xtask
# image-check`). Stage 2 is that binary on distroless/static: CA certificates, /etc/passwd,
# /etc/nsswitch.conf, no shell, no package manager.
FROM rust:1.95-bookworm AS build
RUN rustup component add rust-src \
 && cargo install bpf-linker@0.10.0 --locked
WORKDIR /src
COPY . .
RUN cargo xtask build-static \
 && cp target/static/x86_64-unknown-linux-gnu/dist/feature-agent /feature-agent

FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /feature-agent /feature-agent
# Root inside the container, with only the capabilities the DaemonSet adds (deploy/base);
# the migrate Job runs it as a non-root user.
ENTRYPOINT ["/feature-agent"]
CMD ["run"]
