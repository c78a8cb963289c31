"""Helpers shared by the benchmarks: machine description, results writing, shared-data paths."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csekit.data.fetch import sha256_file  # noqa: F401  (re-exported for the benchmarks)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def shared_root() -> Path:
    return Path(os.environ.get("CSEKIT_SHARED", REPO_ROOT.parent / "shared")).resolve()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, GPU (if any) and the versions of the libraries that matter."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1_5_15": os.getloadavg(),  # the machine is shared: how loaded it was
    }
    versions = {}
    for name in ("torch", "transformers", "accelerate", "sentence_transformers", "numpy", "scipy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is recorded, not fatal
            versions[name] = None
    import csekit

    versions["csekit"] = csekit.__version__
    info["versions"] = versions
    return info


def quick_gflops() -> float:
    """fp32 matrix-product rate right now (a 2048x384 @ 384x1536 product, best of 10)."""
    import time

    import torch

    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(10):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 384 * 1536 / best / 1e9


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``benchmarks/results/<name>.json`` and ``.md`` (machine info added to both)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine_info(), **payload}
    jpath = RESULTS_DIR / f"{name}.json"
    mpath = RESULTS_DIR / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    header = (
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; "
        f"torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, "
        f"sentence-transformers {m['versions']['sentence_transformers']}; {m['date']}\n\n"
    )
    mpath.write_text(markdown.rstrip() + "\n\n" + header)
    return jpath, mpath
