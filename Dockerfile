# imgserve images. Targets:
#   cpu     the serving image: FastAPI + OpenVINO + ONNX Runtime (CPU); no torch, no compilers, no caches
#   gpu     the same service on a CUDA base image: onnxruntime-gpu, TensorRT, PyTorch + nvJPEG decode, NVML
#           (the image itself is unbuilt here; its PyTorch path ran on an H200: README, "GPU")
#   export  torch + torchvision + the exporter, for filling a model repository
# Base images are build arguments:
#   docker build --target cpu    -t imgserve:cpu    .
#   docker build --target gpu    -t imgserve:gpu    --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
#   docker build --target export -t imgserve:export .
# Behind a TLS-intercepting proxy, pass its CA bundle to pip as a BuildKit secret:
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
# (no `# syntax=` line on purpose: the builder's own Dockerfile frontend runs, nothing is pulled for it)

ARG BASE_IMAGE=debian:bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- python: Debian's python3 (3.11 on bookworm) and the service user --------------------------------
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv libgomp1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 imgserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/imgserve --create-home imgserve \
 && mkdir -p /models && chown imgserve:imgserve /models

# ---- build: a virtual environment with the service installed (non-editable) -------------------------
FROM python AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# dependencies first (cached until pyproject.toml or constraints.txt change), then the code
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies']))" > requirements.txt \
 && pip install -q -c constraints.txt -r requirements.txt
COPY modelrepo modelrepo
COPY service service
COPY export export
COPY loadtest loadtest
COPY imgserve_cli imgserve_cli
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install -q --no-deps . \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/bin/pip*

# ---- cpu: the serving image ----------------------------------------------------------------------
FROM python AS cpu
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/scripts/export-if-missing.sh /usr/local/bin/imgserve-export-if-missing
ENV PATH=/opt/venv/bin:$PATH \
    IMGSERVE_HOST=0.0.0.0 IMGSERVE_PORT=8000 IMGSERVE_MODEL_REPO=/models IMGSERVE_LOG_FORMAT=json
USER imgserve
WORKDIR /home/imgserve
EXPOSE 8000 8001
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('IMGSERVE_PORT', '8000'), timeout=2)"
# exec form: python is PID 1 and gets SIGTERM itself (readiness 503, drain, exit)
ENTRYPOINT ["python", "-m", "service"]

# ---- export: torch + torchvision + the exporter (PyPI's torch wheels: several GB) --------------------
FROM python AS export
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['export']))" > requirements.txt \
 && pip install -q -c constraints.txt -r requirements.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
COPY modelrepo modelrepo
COPY service service
COPY export export
COPY loadtest loadtest
COPY imgserve_cli imgserve_cli
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install -q --no-deps . \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /src
COPY --chmod=0755 deploy/scripts/export-if-missing.sh /usr/local/bin/imgserve-export-if-missing
ENV IMGSERVE_MODEL_REPO=/models
USER imgserve
WORKDIR /home/imgserve
VOLUME ["/models"]
ENTRYPOINT ["imgserve-export-if-missing"]

# ---- gpu: the service on CUDA (untested on this project's machines: no GPU) --------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 imgserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/imgserve --create-home imgserve \
 && mkdir -p /models && chown imgserve:imgserve /models
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY modelrepo modelrepo
COPY service service
COPY export export
COPY loadtest loadtest
COPY imgserve_cli imgserve_cli
# onnxruntime-gpu replaces the CPU onnxruntime (the same module); TensorRT, torch(vision) and NVML from '.[gpu]'
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/venv && . /opt/venv/bin/activate \
 && pip install -q -c constraints.txt '.[gpu]' \
 && pip uninstall -y -q onnxruntime \
 && pip install -q --force-reinstall --no-deps onnxruntime-gpu \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /src
COPY --chmod=0755 deploy/scripts/export-if-missing.sh /usr/local/bin/imgserve-export-if-missing
ENV PATH=/opt/venv/bin:$PATH \
    IMGSERVE_HOST=0.0.0.0 IMGSERVE_PORT=8000 IMGSERVE_MODEL_REPO=/models IMGSERVE_LOG_FORMAT=json \
    IMGSERVE_DEVICE=cuda NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER imgserve
WORKDIR /home/imgserve
EXPOSE 8000 8001
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('IMGSERVE_PORT', '8000'), timeout=2)"
ENTRYPOINT ["python", "-m", "service"]

# ---- loadtest: locust + the load test's photos (compose profile `loadtest`) ------------------------------
FROM python AS loadtest
COPY constraints.txt /tmp/constraints.txt
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q -c /tmp/constraints.txt locust scikit-image \
 && rm /tmp/constraints.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
COPY loadtest/*.py /app/loadtest/
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app
USER imgserve
WORKDIR /app
ENTRYPOINT ["locust", "-f", "/app/loadtest/locustfile.py"]
