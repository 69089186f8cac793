# The gorgon image: one binary that serves as file server (`gorgon start_rsync`), listener
# (`gorgon listen`) or originator (`gorgon start`). Used by docker-compose.yml.

FROM rust:slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends rsync ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /srv/gorgon /etc/gorgon
COPY --from=builder /src/target/release/gorgon /usr/local/bin/gorgon
CMD ["gorgon", "--help"]
