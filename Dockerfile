# The proxy itself as a container image: a static `portcullis` FROM scratch,
# run as a non-root user, made for a read-only root filesystem.
#
# No registry is reached: a Rust toolchain image would have to be pulled, so
# the binaries are built on the host, statically linked, and copied in.
#   scripts/build-proxy-image.sh [TAG]      # default portcullis/proxy:dev
# runs the static cargo build, puts the binaries and this file in
# target/proxy-image/, and builds the image from there.
#
# Run it (see the README, "The proxy in a container"):
#   docker run --read-only --cap-drop ALL --security-opt no-new-privileges \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v "$PWD/portcullis.toml:/etc/portcullis/portcullis.toml:ro" \
#     -v portcullis-data:/data -p 127.0.0.1:8811:8811 portcullis/proxy:dev
FROM scratch
COPY portcullis /portcullis
# The example MCP server, for the quickstart and the compose example.
COPY portcullis-example-server /portcullis-example-server
# CA certificates (the build machine's) for `remote` servers and an OTLP
# collector over https: the HTTP client does not start without them.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65534:65534
# The config's relative paths (data_dir = "/data" recommended) and the audit
# log live on volumes; nothing else is written.
WORKDIR /data
EXPOSE 8811
ENTRYPOINT ["/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
