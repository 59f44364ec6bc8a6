# apim-mi as a container: `apim-mi proxy` (mitmdump with the addon), configured from the environment
# (APIM_MI_SET_<OPTION>=value becomes --set <option>=value; arguments after the image name are mitmdump options).
# Build: docker build -t apim-mi . ; run: docker run -p 8080:8080 -v apim-mi-ca:/home/apim-mi/.mitmproxy apim-mi
# See docs/operations.md (Kubernetes sidecar and forward proxy manifests in deploy/kubernetes/).

FROM python:3.13-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY addon ./addon
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.13-slim
LABEL org.opencontainers.image.title="apim-mi" \
      org.opencontainers.image.description="Azure API Management's authentication-managed-identity policy as a mitmproxy addon"
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APIM_MI_SET_LISTEN_HOST=0.0.0.0 \
    APIM_MI_SET_LISTEN_PORT=8080 \
    APIM_MI_SET_MI_RULES=/etc/apim-mi/rules.yaml \
    APIM_MI_SET_MI_METRICS=0.0.0.0:9464
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/apim-mi --shell /usr/sbin/nologin apim-mi \
    && mkdir -p /home/apim-mi/.mitmproxy \
    && chown apim-mi:apim-mi /home/apim-mi/.mitmproxy
# The demo rules (embedded emulator); mount your own rules file over it (a ConfigMap in Kubernetes).
COPY addon/apim_mi/data/demo-rules.yaml /etc/apim-mi/rules.yaml
USER 10001:10001
WORKDIR /home/apim-mi
# mitmproxy's confdir: its CA (created on first start unless you provide one) must outlive the container.
VOLUME ["/home/apim-mi/.mitmproxy"]
EXPOSE 8080 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["apim-mi", "healthcheck"]
ENTRYPOINT ["apim-mi", "proxy"]
