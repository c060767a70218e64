# smtpgate's image: a build stage, then a runtime stage holding only the
# binary and the runtime libraries.  deploy/docker-compose.yml runs it in
# front of Postfix and Redis; README.md, "Deploy", shows both.
#
#   docker build -t smtpgate .
#   docker run --rm smtpgate -V
#   docker run --rm -v /srv/smtpgate:/etc/smtpgate:ro smtpgate -t
#   docker run -d -p 25:25 -p 587:587 -v /srv/smtpgate:/etc/smtpgate:ro smtpgate
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libuv1-dev libssl-dev \
        libpcre2-dev libhiredis-dev libyaml-dev libcrypt-dev libmicrohttpd-dev \
        python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proxy proxy
COPY policy policy
COPY filters filters
COPY tests tests
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    && cmake --build build -j "$(nproc)" --target smtpgate \
    && strip --strip-debug build/smtpgate

FROM debian:bookworm-slim
# The libraries smtpgate links (libssl3 for TLS, libcrypt1 for AUTH's
# password hashes, libmicrohttpd12 for the metrics endpoint).
RUN apt-get update && apt-get install -y --no-install-recommends \
        libuv1 libyaml-0-2 libpcre2-8-0 libhiredis0.14 libssl3 libcrypt1 \
        libmicrohttpd12 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10025 smtpgate \
    && useradd --system --uid 10025 --gid smtpgate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin smtpgate
COPY --from=build /src/build/smtpgate /usr/local/bin/smtpgate
# The compose deployment's configuration as the default; mount your own
# over /etc/smtpgate (smtpgate.yaml, users, policy/, tls/cert.pem and
# tls/key.pem).  No certificate is built into the image: a key baked into
# a public image is no secret.
COPY deploy/smtpgate/smtpgate.yaml deploy/smtpgate/users /etc/smtpgate/
COPY deploy/policy/ /etc/smtpgate/policy/
RUN install -d -m 0755 /etc/smtpgate/tls
VOLUME ["/etc/smtpgate"]
# Not root.  Binding 25 and 587 as a user needs the container's
# net.ipv4.ip_unprivileged_port_start at 0 (Docker's default since 20.10;
# the compose file sets it too).
USER smtpgate
EXPOSE 25 587 9425
# The listener on port 25 must greet with 220.  bash (always in Debian)
# opens the TCP connection: the image has no curl or nc.  Each check is
# one short session in the log ("session end ... reason="quit"").
ENV SMTPGATE_HEALTHCHECK_PORT=25
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SMTPGATE_HEALTHCHECK_PORT} && IFS= read -r -t 4 line <&3 && [[ $line == 220* ]] && printf 'QUIT\\r\\n' >&3"]
# smtpgate is PID 1 and handles the signals itself: it installs handlers
# for SIGTERM, SIGINT and SIGHUP (the kernel drops only the signals a PID
# 1 leaves at their default action).  SIGTERM drains: idle sessions get
# 421 4.3.2, transactions in flight end (timeouts.drain, 30 s); give
# "docker stop -t" longer than that.  SIGHUP reloads.
STOPSIGNAL SIGTERM
# The config file is part of the entry point, so arguments add options:
#   docker run IMAGE -t                     check the configuration
#   docker run IMAGE --explain client=...   explain the policy
#   docker run IMAGE -c /other.yaml         another file (the last -c wins)
ENTRYPOINT ["/usr/local/bin/smtpgate", "-c", "/etc/smtpgate/smtpgate.yaml"]
CMD []
