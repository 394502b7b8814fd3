"""Benchmarks behind ``python run.py bench NAME [--json] [--seconds S]``.

Each benchmark is a function ``run(seconds) -> {"config": {...}, "rows": [{...}, ...]}`` listed in
:data:`BENCHMARKS`. :func:`run_bench` adds the benchmark's name and a description of the machine,
then prints either a readable table or (``--json``) exactly one JSON object on stdout:
``{"bench": NAME, "machine": {...}, "config": {...}, "rows": [...]}``. In JSON mode nothing else
reaches stdout: anything printed while the benchmark runs (by Python or by C libraries writing to
file descriptor 1) is sent to stderr instead.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import sys

from common.errors import UserError


BENCHMARKS: dict[str, str] = {"throughput": "bench.throughput", "rtrl": "bench.rtrl", "store": "bench.store", "moe": "bench.moe", "cache": "bench.cache",
                               "scale": "bench.scale"}
"""Benchmark name -> module with ``run(seconds) -> dict`` and ``format_table(result) -> str``; imported
lazily so one benchmark's imports never slow another."""


def run_bench(name: str, as_json: bool, seconds: float) -> None:
    """Run benchmark ``name`` for ``seconds`` of measuring time per row and print its result."""
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if not seconds > 0:
        raise UserError(f"--seconds must be positive, got {seconds}")
    module = importlib.import_module(BENCHMARKS[name])
    if as_json:
        with _stdout_to_stderr():
            result = module.run(seconds)
        doc = {"bench": name, "machine": machine_info(), **result}
        print(json.dumps(doc, allow_nan=False))
    else:
        result = module.run(seconds)
        m = machine_info()
        print(f"bench {name}: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
              f"device {m.get('gpu', m['device'])}")
        print(module.format_table(result))


def machine_info() -> dict:
    """CPU model, core count, torch version and threads, and the device ``auto`` resolves to."""
    import torch

    from common.device import resolve_device

    device = resolve_device("auto")
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout (Python and file descriptor 1) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
