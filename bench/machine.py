"""Facts about the machine and the libraries, recorded with every benchmark result."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> dict | None:
    """The first NVIDIA GPU as nvidia-smi reports it, or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, driver, memory = (x.strip() for x in out.stdout.splitlines()[0].split(","))
    return {"name": name, "driver": driver, "memory": memory}


def versions(*names: str) -> dict:
    """Installed versions of the named modules (None for those not installed)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:  # not installed
            found[name] = None
        except Exception as e:  # installed but broken: say so, rather than pass it off as absent
            found[name] = f"broken: {type(e).__name__}: {e}"
    return found


def describe(*libraries: str) -> dict:
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "gpu": gpu(), "platform": platform.platform(), "versions": versions(*libraries)}
