# tenantserve's image: the server under SageMaker's bring-your-own-container contract, and the
# runtime image of deploy/kserve/servingruntime.yaml (docs/deploy.md).
#   docker build -t tenantserve:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/ml:/opt/ml" tenantserve:0.1.0 serve
# The build stage makes the wheel and a virtualenv of it at the versions constraints.txt pins;
# the final stage is a slim Python with that virtualenv only: no compiler, no pip, not root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# The wheel as tests/integration/test_wheel.py builds and installs it; --python installs into
# a virtualenv made without pip, so the final stage carries none.
RUN python -m pip install pip==26.3 \
 && python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/tenantserve \
 && python -m pip --python /opt/tenantserve/bin/python install \
        --constraint constraints.txt /dist/tenantserve-*.whl

FROM ${PYTHON_IMAGE}
# SageMaker: the image serves multi-model endpoints and listens where SAGEMAKER_BIND_TO_PORT says.
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      org.opencontainers.image.title=tenantserve \
      org.opencontainers.image.licenses=Apache-2.0
# The base image's installers are not needed to serve. /opt/ml/models exists before SageMaker's
# first load (the server checks its store at start) and is the server user's.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --gid 10001 tenantserve \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tenantserve \
        --shell /usr/sbin/nologin tenantserve \
 && mkdir -p /opt/ml/models \
 && chown 10001:10001 /opt/ml/models
COPY --from=build /opt/tenantserve /opt/tenantserve
# The server user's home holds the disk cache (~/.cache/tenantserve, TENANTSERVE_CACHE_DIR).
ENV PATH=/opt/tenantserve/bin:$PATH \
    HOME=/home/tenantserve \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/tenantserve
EXPOSE 8080
ENTRYPOINT ["tenantserve", "sagemaker"]
CMD ["serve"]
