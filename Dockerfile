# syntax=docker/dockerfile:1
# logvold image: `logvold serve` (docs/DEPLOY.md). Build: docker build -t logvold:0.1.0 .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY logvold ./logvold
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# journalctl answers node log queries for systemd services (nodeLogQuery.journal: auto);
# it is in Debian's systemd package. Nothing else of systemd runs in the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin logvold
COPY config.example.yaml /usr/share/doc/logvold/config.example.yaml
# Non-root by default: enough for volumes logvold's own user may write
# (`docker run -v ./logs:/logs ... --logs-dir /logs`). The DaemonSet sets
# runAsUser: 0 with only DAC_OVERRIDE, FOWNER and CHOWN, because pod log files
# belong to whatever user each container runs as, and Kubernetes grants added
# capabilities to root only (no ambient capabilities for other users).
USER 10001:10001
EXPOSE 8642
ENTRYPOINT ["logvold", "serve"]
CMD ["--config", "/etc/logvold/config.yaml"]
