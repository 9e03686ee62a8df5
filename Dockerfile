# secretivex container image.
#
# Targets:
#   runtime (default) the agent: non-root, socket in the /run/secretivex volume
#   softhsm           runtime + SoftHSM2/OpenSC; initialises a token from env at start
#
# Build it with `make image` (ci/build-image.sh): Python packages come from a
# wheelhouse built on the host into .build/wheelhouse (no index is used inside
# the build), and BASE_IMAGE may be a locally debootstrapped Debian image.
#
#   docker build --network host --build-arg BASE_IMAGE=secretivex-base:bookworm \
#       --target runtime -t secretivex:dev .

ARG BASE_IMAGE=debian:bookworm-slim

# --- python: Debian's python3, shared by the build and runtime stages ---------
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

# --- build: venv at /opt/secretivex from the wheelhouse; no pip, stripped .so files ---
FROM python AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv binutils \
 && rm -rf /var/lib/apt/lists/*
COPY .build/wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/secretivex \
 && /opt/secretivex/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse secretivex \
 && /opt/secretivex/bin/pip uninstall -y -q pip setuptools \
 && rm -f /opt/secretivex/bin/activate* /opt/secretivex/bin/Activate.ps1 \
 && find /opt/secretivex -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/secretivex/bin/secretivex --version
# make image tags this stage (secretivex-build:cache) so rebuilds can prune old ones.
LABEL secretivex.stage=build

# --- agent-base: the agent, unlabelled (label changes must not rebuild apt layers) ---
FROM python AS agent-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 secretivex \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/secretivex \
        --shell /usr/sbin/nologin secretivex \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/secretivex \
 && install -d -o 10001 -g 10001 -m 0755 /run/secretivex \
 && install -d -m 0755 /etc/secretivex /etc/secretivex/config.d
COPY --from=build /opt/secretivex /opt/secretivex
COPY docker/entrypoint.sh /usr/local/bin/secretivex-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/secretivex-healthcheck
ENV PATH=/opt/secretivex/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSH_AUTH_SOCK=/run/secretivex/agent.sock \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/run/secretivex"]
WORKDIR /var/lib/secretivex
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/secretivex-healthcheck"]
# tini is PID 1: it forwards SIGTERM to the agent and reaps children (confirm hooks).
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/secretivex-entrypoint"]
CMD []

# --- runtime (default target): the agent image ----------------------------------
FROM agent-base AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="secretivex" \
      org.opencontainers.image.description="SSH agent appliance: OpenSSH key files, PKCS#11 tokens and upstream agents behind scoped Unix sockets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="secretivex developers" \
      org.opencontainers.image.documentation="docs/containers.md"

# --- softhsm: runtime + a SoftHSM token initialised from env at start ---------------
FROM agent-base AS softhsm
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 opensc \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/secretivex/tokens
COPY docker/softhsm-init.sh /usr/local/bin/secretivex-softhsm-entrypoint
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/secretivex-softhsm-entrypoint"]
CMD []
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="secretivex-softhsm" \
      org.opencontainers.image.description="secretivex agent with a SoftHSM2 token initialised from the environment (tests and demos)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="secretivex developers" \
      org.opencontainers.image.documentation="docs/containers.md"

# Plain `docker build .` produces the agent image.
FROM runtime AS default
