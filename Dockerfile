# smtpgate: build stage, then a runtime image with only the runtime
# libraries.  A first version: the compose deployment with Postfix comes
# with deploy/docker-compose.yml.
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libuv1-dev libssl-dev \
        libpcre2-dev libhiredis-dev libyaml-dev libcrypt-dev python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proxy proxy
COPY policy policy
COPY filters filters
COPY tests tests
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    && cmake --build build -j "$(nproc)" --target smtpgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libuv1 libyaml-0-2 libpcre2-8-0 libhiredis0.14 libssl3 libcrypt1 \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin smtpgate
COPY --from=build /src/build/smtpgate /usr/local/bin/smtpgate
COPY deploy/smtpgate.yaml deploy/policy.yaml deploy/policy-ratelimits.yaml /etc/smtpgate/
USER smtpgate
EXPOSE 2525
# SIGTERM drains: idle sessions get 421 4.3.2, transactions in flight end.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtpgate"]
CMD ["-c", "/etc/smtpgate/smtpgate.yaml"]
