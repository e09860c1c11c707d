#!/usr/bin/env bash
# Download (here, where pip reaches a registry) the Python wheels that eval/gpu_check.sh needs on the
# lent H200, whose CUDA image has python3 3.12, torch 2.11 and triton 3.6 but no diffusers, and reaches
# no registry. They land in .whl/ (git-ignored through .git/info/exclude, never committed); the device
# call names `.whl` in `carry` and gpu_check.sh installs them with --no-index into /tmp/site.
#
#   bash eval/gpu_wheels.sh                 # diffusers==0.42.1 (the pinned version)
#   bash eval/gpu_wheels.sh NAME==VERSION   # more (name each missing dependency too: --no-deps)
#
# diffusers 0.42.1's own needs (filelock, huggingface-hub>=1.32, numpy, regex, requests, safetensors>=0.8,
# Pillow) are all in that image (huggingface_hub 1.33.0, safetensors 0.8.0); importlib_metadata is only
# imported on Python < 3.8. Keep one version of each package in .whl/: two stop the whole install.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(diffusers==0.42.1)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl
for w in .whl/*.whl; do
    echo "== $w requires:"
    unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
