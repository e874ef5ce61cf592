# The gateway image. `gateway serve` by default; `gateway admin` for the admin API; the demo
# backend of deploy/docker-compose.yml is `python -m gateway.echo`.
#   docker build -t api-key-gateway:0.1.0 .
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE gateway_verify.py ./
COPY gateway ./gateway
COPY admin_api ./admin_api
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /install /usr/local
COPY gateway/data/scopes.yaml /etc/gateway/scopes.yaml
USER 10001:10001
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# proxy, admin API, ops (/healthz, /readyz, /metrics), forward-auth
EXPOSE 8080 8081 9090 9091 9100
# The ops listener must listen on 0.0.0.0 in a container for probes to reach it.
ENTRYPOINT ["gateway"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--ops-listen", "0.0.0.0:9090", "--scopes", "/etc/gateway/scopes.yaml"]
