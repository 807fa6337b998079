# syntax=docker/dockerfile:1
# logvold image: `logvold serve` (docs/DEPLOY.md). Build: docker build -t logvold:0.1.0 .
# Without arguments it manages every *.log in /logs (mount a directory there) on its
# built-in defaults, listening on 127.0.0.1:8642 inside the container: see docs/DEPLOY.md,
# "The container image", before publishing the port. The DaemonSet passes --config.

# An exact Python release on an exact Debian release, the same in both stages:
# rebuilding next month gives the same interpreter (bump both lines together).
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY logvold ./logvold
# A C compiler for the json-file chunk escaper (logvold/core/_json_lines.c): without
# one the wheel still builds, and the driver's json-file output costs ~2x the CPU.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="logvold" \
      org.opencontainers.image.description="Pod log volume manager: rotates container logs without splitting, losing or duplicating events, and serves them." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/logvold/logvold" \
      org.opencontainers.image.documentation="https://github.com/logvold/logvold/blob/main/docs/DEPLOY.md" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.13-slim-bookworm"
# journalctl answers node log queries for systemd services (nodeLogQuery.journal: auto);
# it is in Debian's systemd package. Nothing else of systemd runs in the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin logvold \
 && install -d -o 10001 -g 10001 -m 0750 /logs
COPY config.example.yaml /usr/share/doc/logvold/config.example.yaml
# Non-root by default: enough for volumes logvold's own user may write
# (`docker run -v ./logs:/logs ...`). The DaemonSet sets
# runAsUser: 0 with only DAC_OVERRIDE, FOWNER and CHOWN, because pod log files
# belong to whatever user each container runs as, and Kubernetes grants added
# capabilities to root only (no ambient capabilities for other users).
USER 10001:10001
EXPOSE 8642
ENTRYPOINT ["logvold", "serve"]
CMD ["--logs-dir", "/logs"]
