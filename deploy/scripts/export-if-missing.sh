#!/bin/sh
# One-shot model export for compose's `export` service and the Kubernetes init container: fill the
# model repository when the default model is missing, exactly as `make serve` does, then exit.
#   IMGSERVE_MODEL_REPO (/models), IMGSERVE_DEFAULT_MODEL (resnet50): where and what to look for
#   EXPORT_ARCH (the model name), EXPORT_WEIGHTS (DEFAULT: torchvision's ImageNet weights),
#   EXPORT_FALLBACK_RANDOM (1: offline, export random weights, loudly; 0: fail instead)
#   EXPORT_ARGS: more `python -m export` flags
set -eu
repo="${IMGSERVE_MODEL_REPO:-/models}"
model="${IMGSERVE_DEFAULT_MODEL:-resnet50}"
arch="${EXPORT_ARCH:-$model}"
if [ -f "$repo/$model/config.pbtxt" ]; then
  echo "export: $repo/$model/config.pbtxt exists, nothing to do"
  exit 0
fi
set -- --arch "$arch" --weights "${EXPORT_WEIGHTS:-DEFAULT}" --repo "$repo"
if [ "$arch" != "$model" ]; then set -- "$@" --name "$model"; fi
if [ "${EXPORT_FALLBACK_RANDOM:-1}" = 1 ]; then set -- "$@" --fallback-random; fi
echo "export: $repo/$model is missing: python -m export $* ${EXPORT_ARGS:-}"
# shellcheck disable=SC2086  # EXPORT_ARGS is a list of flags
exec python -m export "$@" ${EXPORT_ARGS:-}
