"""What every benchmark records beside its figures: the median and spread of timings, and the date, machine
and versions of the run, written as ``{"meta": ..., "rows": [...]}``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np


def summarize(times: list[float]) -> dict:
    """Median and inter-quartile range: robust to the odd slow repeat on a shared machine."""
    q = np.percentile(times, [25, 50, 75])
    return {"median_s": float(q[1]), "iqr_s": float(q[2] - q[0]), "n": len(times)}


def write_results(path: str, rows: list[dict], **settings) -> None:
    """``rows`` with the run's date, machine, TensorFlow (and PyTorch, if installed) versions, command line
    and ``settings``."""
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "tensorflow": version("tensorflow"), **settings, "argv": sys.argv}
    try:
        meta["torch"] = version("torch")
    except PackageNotFoundError:
        pass
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
