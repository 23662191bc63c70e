"""Shared helpers of the benchmark scripts: paths, hardware description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("LONGRAG_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = REPO / "bench" / "results"
WORK = Path(os.environ.get("LONGRAG_BENCH_WORK", "/tmp/longrag-bench"))

os.environ.setdefault("LONGRAG_MODEL_CACHE", str(REPO / ".cache" / "models"))


def set_threads(n: int = 2) -> None:
    """Pin torch to ``n`` threads (``LONGRAG_BENCH_THREADS`` overrides) for comparable runs."""
    import torch

    torch.set_num_threads(int(os.environ.get("LONGRAG_BENCH_THREADS", n)))


def hardware() -> dict[str, Any]:
    """A short description of the machine a figure was measured on."""
    cpu = platform.processor() or ""
    vector: list[str] = []  # "AMD EPYC" names several generations; the vector extensions tell them apart
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                vector = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
                break
    except OSError:
        pass
    try:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        threads = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - torch missing is fine for a description
        cuda, threads = None, None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpu_vector_extensions": vector,
        "cores": os.cpu_count(),
        "gpu": cuda,
        "torch_threads": threads,
        "load_avg_1m_at_start": load,
        "note": ("busy" if load is not None and load >= (os.cpu_count() or 1) else "idle or lightly loaded")
        + " at start (1-minute load average vs cores); compare ratios measured in the same run",
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (with a timestamp) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    return path
