#!/usr/bin/env bash
# GPU check for xpmlp: tests, NVRTC probe, memory flatness and the MNIST benchmark on an NVIDIA GPU,
# in under 8 minutes, results in OUTDIR. The work is done by bench/gpu_check.py (same options);
# `bash bench/gpu_check.sh --help` lists the steps and their time budgets.
#
#   bash bench/gpu_check.sh OUTDIR     exit 0: all steps ok; 1: a step failed, errored or timed out;
#                                      2: no usable NVIDIA GPU (nothing run, nothing written) or bad usage
#
# Uses `python3` from PATH (or $PYTHON) with PYTHONPATH and XPMLP_DATA as given; installs nothing.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "gpu_check: $py not found" >&2
  exit 2
fi
exec "$py" "$here/gpu_check.py" "$@"
