"""Shared plumbing for genfast's benchmarks.

Every benchmark module (``genfast.bench.kmeans``, ``gmm``, ``elbo``, ``mc``, ``dask``) uses
this module for the parts that must be the same across benchmarks, so their JSON files can be
compared and joined:

- :func:`machine_info` - CPU model, physical cores / logical CPUs, memory, load, GPU.
- :func:`package_versions` - genfast, numpy, scikit-learn, faiss, torch, threadpoolctl, dask,
  distributed, dask-ml
  (``None`` when a package is absent), read from the installed metadata (no imports).
- :func:`genfast_config` - ``genfast.config()``, or ``None`` with the import error.
- :func:`time_call` - a robust timer: warm-up call(s), repeats, median/min/max/mean and every
  sample, the GC paused during timed calls, an optional device synchronisation around them.
- :func:`format_table` / :func:`print_table` - fixed-width text tables.
- :func:`write_results` - JSON to ``<out>/<name>-<device>-<UTC timestamp>.json`` plus a copy
  at ``<out>/<name>-<device>-latest.json``; :func:`finish` writes it and gives the exit status.
- :func:`skip` - a whole benchmark that cannot run here (no torch, no GPU): said, not an error.
  ``genfast bench`` reads what the last run recorded or skipped from :data:`LAST_RUN`.

Only the standard library is needed at import time; numpy, torch, threadpoolctl are imported
lazily and their absence is reported, never raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import importlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

SCHEMA_VERSION = 1

#: Default folder for result files: ``benchmarks/results`` under the current directory (the
#: package is installed without the repository, so there is no folder next to this module).
RESULTS_DIR = Path("benchmarks") / "results"

#: Packages whose versions every result file records, as ``key: distribution names to try``.
PACKAGES = {
    "genfast": ("genfast",),
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "torch": ("torch",),
    "threadpoolctl": ("threadpoolctl",),
    "dask": ("dask",),
    "distributed": ("distributed",),
    "dask-ml": ("dask-ml",),
}


# --------------------------------------------------------------------------- machine
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _run(cmd: Sequence[str], timeout: float = 10.0) -> str | None:
    """stdout of a command, or None if it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _cpu_info() -> dict:
    """CPU model, physical cores and logical CPUs (from /proc/cpuinfo, else lscpu)."""
    model = None
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    text = _read("/proc/cpuinfo")
    if text:
        phys = core = None
        for line in text.splitlines() + [""]:
            if not line.strip():  # end of one processor block
                if core is not None:
                    cores.add((phys or "0", core))
                phys = core = None
                continue
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model is None:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
    lscpu = _run(["lscpu"])
    lscpu_fields: dict[str, str] = {}
    if lscpu:
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            lscpu_fields[key.strip()] = value.strip()
    if model is None:
        model = lscpu_fields.get("Model name")
    physical = len(cores) or None
    if physical is None and lscpu_fields:
        try:
            physical = int(lscpu_fields["Core(s) per socket"]) * int(lscpu_fields.get("Socket(s)", "1"))
        except (KeyError, ValueError):
            physical = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    simd = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                        "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve") if f in flags]
    return {
        "model": model,
        "architecture": platform.machine(),
        "physical_cores": physical,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,  # the CPUs this process may run on (affinity mask)
        "threads_per_core": lscpu_fields.get("Thread(s) per core"),
        "sockets": lscpu_fields.get("Socket(s)"),
        "hypervisor": lscpu_fields.get("Hypervisor vendor"),
        "l2_cache": lscpu_fields.get("L2 cache"),
        "l3_cache": lscpu_fields.get("L3 cache"),
        "simd_flags": simd,
    }


def _memory_info() -> dict:
    out: dict[str, Any] = {"total_bytes": None, "available_bytes": None}
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if key in ("MemTotal", "MemAvailable") and parts:
                n = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
                out["total_bytes" if key == "MemTotal" else "available_bytes"] = n
    return out


def _gpu_info() -> dict:
    """GPUs seen by torch.cuda (if torch is importable and has CUDA) and by nvidia-smi."""
    info: dict[str, Any] = {"torch_cuda_available": False, "devices": [], "nvidia_smi": None}
    if "torch" in sys.modules or _dist_version(("torch",)) is not None:
        try:
            import torch

            info["torch_cuda_build"] = torch.version.cuda
            if torch.cuda.is_available():
                info["torch_cuda_available"] = True
                for i in range(torch.cuda.device_count()):
                    p = torch.cuda.get_device_properties(i)
                    info["devices"].append({
                        "index": i, "name": p.name,
                        "capability": f"{p.major}.{p.minor}",
                        "total_memory_bytes": p.total_memory,
                        "multiprocessors": p.multi_processor_count,
                    })
        except Exception as e:  # a broken torch install must not stop the benchmark
            info["torch_error"] = f"{type(e).__name__}: {e}"
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader"])
    if smi:
        rows = [r.strip() for r in smi.strip().splitlines() if r.strip()]
        info["nvidia_smi"] = rows
        m = re.match(r"[^,]*,\s*([^,]+)", rows[0]) if rows else None
        info["driver_version"] = m.group(1).strip() if m else None
        head = _run(["nvidia-smi"]) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        info["driver_cuda_version"] = m.group(1) if m else None
    return info


def machine_info(*, gpu: bool = True) -> dict:
    """Everything about the machine a reader needs to judge the numbers."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    info = {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu": _cpu_info(),
        "memory": _memory_info(),
        "loadavg_1_5_15": load,
        "env": {k: os.environ.get(k) for k in (
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_PROC_BIND",
            "OMP_PLACES", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")
            if os.environ.get(k) is not None},
    }
    if gpu:
        info["gpu"] = _gpu_info()
    return info


def loadavg() -> float | None:
    """1-minute load average (None where unavailable)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def busy_warning(threads: int, when: str = "before the run") -> str | None:
    """A warning line when the machine looks busy (1-minute load above half the CPUs), else None."""
    load = loadavg()
    if load is None:
        return None
    cpus = _cpu_info()["usable_cpus"] or os.cpu_count() or 1
    if load > 0.5 * cpus:
        return (f"warning: 1-minute load average is {load:.2f} on {cpus} CPUs {when}; "
                f"timings with {threads} threads are noisy")
    return None


# --------------------------------------------------------------------------- packages
def _dist_version(names: Iterable[str]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def package_versions() -> dict:
    """Installed versions of the packages benchmarks compare (None when absent)."""
    versions = {key: _dist_version(names) for key, names in PACKAGES.items()}
    if versions["faiss"] is None and "faiss" in sys.modules:
        versions["faiss"] = getattr(sys.modules["faiss"], "__version__", None)
    return versions


def genfast_config() -> dict:
    """genfast.config(), or {'error': ...} when genfast cannot be imported."""
    try:
        import genfast

        cfg = genfast.config()
        cfg["module_path"] = str(Path(genfast.__file__).parent)
        return cfg
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def threadpool_info() -> list | None:
    """threadpoolctl's view of the loaded BLAS / OpenMP libraries and their thread counts."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.threadpool_info()


def try_import(name: str):
    """(module, None) or (None, reason) - for peers that may not be installed. A dotted name
    ('sklearn.cluster') gives that submodule."""
    try:
        return importlib.import_module(name), None
    except ImportError as e:
        return None, f"{name} is not installed ({e})"
    except Exception as e:  # installed but broken
        return None, f"importing {name} failed: {type(e).__name__}: {e}"


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    """Wall-clock samples of one measured call, in seconds."""

    samples: list[float]
    warmup: list[float]
    output: Any = dataclasses.field(default=None, repr=False)  # what the last timed call returned

    @property
    def median(self) -> float:
        s = sorted(self.samples)
        n = len(s)
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)

    @property
    def stdev(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self.samples) / (len(self.samples) - 1))

    def scaled(self, factor: float) -> dict:
        """Summary with every sample multiplied by factor (e.g. 1 / iterations)."""
        return {
            "median": self.median * factor, "min": self.min * factor, "max": self.max * factor,
            "mean": self.mean * factor, "stdev": self.stdev * factor,
            "samples": [x * factor for x in self.samples],
        }

    def as_dict(self) -> dict:
        d = self.scaled(1.0)
        d["repeats"] = len(self.samples)
        d["warmup"] = list(self.warmup)
        return d


def time_call(fn: Callable[..., Any], *, repeats: int = 3, warmup: int = 1,
              warmup_fn: Callable[[], Any] | None = None, setup: Callable[[], Any] | None = None,
              sync: Callable[[], None] | None = None, disable_gc: bool = True) -> Timing:
    """Time ``fn`` robustly.

    - ``warmup`` untimed calls first (of ``warmup_fn`` when given - e.g. a cheaper call with
      the same shapes, which still triggers lazy initialisation and JIT compilation); their
      durations are kept in ``Timing.warmup`` (a compile time shows up there).
    - then ``repeats`` timed calls; with ``setup``, each is ``fn(setup())`` and setup is
      not timed.
    - ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock starts and before it
      stops, so asynchronous device work is counted.
    - the garbage collector is collected before and paused during each timed call.
    Uses time.perf_counter. Returns a :class:`Timing` whose ``output`` is what the last timed
    call returned.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = sync or (lambda: None)
    warm_times = []
    for _ in range(warmup):
        arg = setup() if setup is not None else None
        sync()
        t0 = time.perf_counter()
        if warmup_fn is not None:
            warmup_fn()
        elif setup is not None:
            fn(arg)
        else:
            fn()
        sync()
        warm_times.append(time.perf_counter() - t0)
    samples = []
    out = None
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            arg = setup() if setup is not None else None
            gc.collect()
            if disable_gc:
                gc.disable()
            sync()
            t0 = time.perf_counter()
            out = fn(arg) if setup is not None else fn()
            sync()
            samples.append(time.perf_counter() - t0)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(samples=samples, warmup=warm_times, output=out)


# --------------------------------------------------------------------------- tables
@dataclasses.dataclass
class Column:
    """One table column: header, the row key it shows, and how to format a value."""

    header: str
    key: str
    fmt: str | Callable[[Any], str] = "{}"
    align: str = ">"  # ">" right, "<" left

    def cell(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return self.fmt(v) if callable(self.fmt) else self.fmt.format(v)


def format_table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """Fixed-width text table; missing or None values print as '-'."""
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    def line(values):
        return "  ".join(f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths)).rstrip()
    out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def print_table(columns: Sequence[Column], rows: Sequence[dict], *, title: str | None = None,
                file=None) -> None:
    file = file or sys.stdout
    if title:
        print(title, file=file)
    print(format_table(columns, rows), file=file)
    file.flush()


# --------------------------------------------------------------------------- results
def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _jsonable(obj):
    """Make numpy scalars/arrays, paths, dataclasses and NaN/inf JSON-safe (NaN/inf -> None)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy scalar or array, torch tensor
        return _jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return str(obj)


def base_record(name: str, device: str, *, argv: Sequence[str] | None = None) -> dict:
    """The header every result file starts with (fill in 'settings' and 'cases' after)."""
    return {
        "benchmark": name,
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "started_utc": utc_now().isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "machine": machine_info(),
        "packages": package_versions(),
        "genfast_config": genfast_config(),
    }


def write_results(name: str, device: str, record: dict, out_dir: str | os.PathLike | None = None,
                  *, stamp: _dt.datetime | None = None) -> tuple[Path, Path]:
    """Write ``record`` as JSON to ``<out_dir>/<name>-<device>-<YYYYmmddTHHMMSSZ>.json`` and
    copy it to ``<out_dir>/<name>-<device>-latest.json``; returns both paths."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stamp = stamp or utc_now()
    record = dict(record)
    record.setdefault("finished_utc", stamp.isoformat(timespec="seconds"))
    text = json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n"
    path = out / f"{name}-{device}-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    latest = out / f"{name}-{device}-latest.json"
    path.write_text(text, encoding="utf-8")
    tmp = latest.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, latest)
    return path, latest


def close_record(record: dict, threads: int, warning_before: str | None) -> None:
    """The end of a run: the load average and the busy-machine warnings (before and after) go
    into the record; the one after is printed."""
    record["loadavg_after"] = loadavg()
    warning_after = busy_warning(threads, "at the end of the run")
    record["warnings"] = [w for w in (warning_before, warning_after) if w]
    if warning_after:
        print("\n" + warning_after)


#: What the last run of each benchmark ended with, by name: ``{"record": ..., "paths": ...}``
#: from :func:`finish` or ``{"skipped": reason}`` from :func:`skip` (read by ``genfast bench``).
LAST_RUN: dict[str, dict] = {}


def skip(name: str, reason: str) -> int:
    """A benchmark that cannot run on this machine: print why, remember it; exit status 0."""
    print(f"skipping: {reason}")
    LAST_RUN[name] = {"skipped": reason}
    return 0


def finish(name: str, device: str, record: dict, n_errors: int, *, out_dir, no_json: bool) -> int:
    """Write the JSON (unless no_json) and say where; the exit status: 1 when a peer raised
    (its traceback is in the JSON), else 0."""
    LAST_RUN[name] = {"record": record, "paths": None}
    if not no_json:
        path, latest = write_results(name, device, record, out_dir)
        LAST_RUN[name]["paths"] = (path, latest)
        print(f"\nwrote {path}\n  and {latest}")
    if n_errors:
        print(f"{n_errors} peer run(s) failed; see 'traceback' in the JSON", file=sys.stderr)
        return 1
    return 0


def describe_machine(record: dict) -> str:
    """One or two human lines about the machine, for the top of a printed report."""
    m = record["machine"]
    cpu = m["cpu"]
    mem = m["memory"].get("total_bytes")
    line = (f"machine: {cpu.get('model')} - {cpu.get('physical_cores')} physical cores / "
            f"{cpu.get('logical_cpus')} logical CPUs ({cpu.get('usable_cpus')} usable)"
            + (f", {mem / 2**30:.0f} GiB RAM" if mem else "")
            + (f", SIMD {'/'.join(cpu['simd_flags'])}" if cpu.get("simd_flags") else ""))
    gpus = m.get("gpu", {}).get("devices") or []
    if gpus:
        g = gpus[0]
        line += (f"\ngpu: {g['name']} (sm_{g['capability'].replace('.', '')}, "
                 f"{g['total_memory_bytes'] / 2**30:.0f} GiB), driver "
                 f"{m['gpu'].get('driver_version')}, torch CUDA {m['gpu'].get('torch_cuda_build')}")
    pk = record["packages"]
    line += "\npackages: " + ", ".join(f"{k} {v}" for k, v in pk.items() if v is not None)
    missing = [k for k, v in pk.items() if v is None]
    if missing:
        line += " (absent: " + ", ".join(missing) + ")"
    return line


# --------------------------------------------------------------------------- command line
def _int_arg(s: str) -> int:
    """An integer written as 1000000, 1_000_000 or 1e6."""
    s = s.strip().replace("_", "")
    try:
        return int(s)
    except ValueError:
        v = float(s)
        if v != int(v):
            raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
        return int(v)


def parse_sizes(text: str, *, points_per_cluster: int = 1) -> list[tuple[int, int, int]]:
    """'N,D,K;N,D,K' -> [(N, D, K), ...], requiring D >= 1, K >= 1 and N >= points_per_cluster * K."""
    sizes = []
    for part in text.split(";"):
        if not part.strip():
            continue
        fields = part.split(",")
        if len(fields) != 3:
            raise argparse.ArgumentTypeError(f"each size is N,D,K (got {part!r})")
        n, d, k = (_int_arg(f) for f in fields)
        if min(n, d, k) < 1 or n < points_per_cluster * k:
            raise argparse.ArgumentTypeError(
                f"need N >= {points_per_cluster}K, K >= 1 and D >= 1 (got {part!r})")
        sizes.append((n, d, k))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def blas_name() -> str:
    """'openblas 0.3.x' for numpy's BLAS (from threadpoolctl), or 'BLAS' when unknown."""
    info = threadpool_info() or []
    for lib in info:
        if lib.get("user_api") == "blas" and "numpy" in (lib.get("filepath") or ""):
            return f"{lib.get('internal_api')} {lib.get('version')}"
    for lib in info:
        if lib.get("user_api") == "blas":
            return f"{lib.get('internal_api')} {lib.get('version')}"
    return "BLAS"


def parse_peers(text: str, aliases: dict[str, list[str]], order: list[str]) -> list[str]:
    """'genfast,torch' -> the peers those names stand for (aliases), in the script's order."""
    chosen: list[str] = []
    for name in text.split(","):
        name = name.strip().lower()
        if not name:
            continue
        if name not in aliases:
            raise argparse.ArgumentTypeError(f"unknown peer {name!r}; choose from {', '.join(aliases)}")
        chosen += [p for p in aliases[name] if p not in chosen]
    return [p for p in order if p in chosen]


def import_modules(names) -> dict:
    """{name: module or None} for each name, with the reasons for the missing ones under '_why'."""
    mods: dict = {"_why": {}}
    for name in sorted(names):
        mods[name], why = try_import(name)
        if why:
            mods["_why"][name] = why
    return mods


def cuda_skip_reason(torch) -> str | None:
    """Why a --device cuda run cannot happen here (None if it can). When it can, TF32 is turned
    off so that every float32 peer and the matmul rate use full float32."""
    if torch is None:
        return "--device cuda needs torch"
    if not torch.cuda.is_available():
        cpu_only = f"; this torch is a CPU-only build {torch.__version__}" if torch.version.cuda is None else ""
        return f"--device cuda needs a CUDA GPU visible to torch (torch.cuda.is_available() is False{cpu_only})"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return None


def limit_threads(threads: int):
    """threadpoolctl's limit of every BLAS/OpenMP pool to `threads` (call
    .restore_original_limits() on the result), or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads)


class PeerRun:
    """The set-up that the k-means and GMM benchmarks' main() share, entered with `with`:
    the peers' modules, the thread count (--threads, else every usable CPU) applied to every
    peer and BLAS/OpenMP pool (restored on exit), and the record with the machine, thread
    pools, CUDA settings and the fairness entries every peer run has.

    start() returns None when the run can go on, else main()'s exit status: 2 when no peer
    was chosen, 0 (a skip) for --device cuda without a usable GPU."""

    def __init__(self, name: str, title: str, args, import_peers, set_threads):
        self.name, self.title, self.args = name, title, args
        self._import_peers, self._set_threads = import_peers, set_threads
        self.mods = self.record = self.threads = self.warning = self._limiter = None

    def start(self) -> int | None:
        args = self.args
        if not args.peers:
            print("no peers selected", file=sys.stderr)
            return 2
        self.mods = self._import_peers(args.peers, args.device)
        if args.device == "cuda":
            why = cuda_skip_reason(self.mods.get("torch"))
            if why:
                torch_why = self.mods["_why"].get("torch")
                return skip(self.name, why + (f" ({torch_why})" if torch_why else ""))
        self.threads = args.threads = args.threads or _cpu_info()["usable_cpus"] or 1
        self.warning = busy_warning(self.threads)
        return None

    def __enter__(self):
        self._limiter = limit_threads(self.threads)
        try:
            how = self._set_threads(self.mods, self.threads)
        except BaseException:
            self.__exit__(True)
            raise
        self.record = base_record(self.name, self.args.device)
        print(f"{self.title} ({self.args.device}); " + describe_machine(self.record))
        if self.warning:
            print(self.warning)
        self.record["fairness"] = {
            "threads_per_peer": self.threads,
            "all_peers_use_all_cores": self.threads == (_cpu_info()["usable_cpus"] or self.threads),
            "thread_controls": how,
            "same_data_for_every_peer": True,
        }
        self.record["threadpools"] = threadpool_info()
        if self.args.device == "cuda":
            torch = self.mods["torch"]
            self.record["cuda"] = {"allow_tf32": False, "torch_cuda": torch.version.cuda,
                                   "device_name": torch.cuda.get_device_name()}
        return self

    def timer(self) -> str:
        """The settings' "timer" entry."""
        return "time.perf_counter" + (", torch.cuda.synchronize() before reading it"
                                      if self.args.device == "cuda" else "")

    def __exit__(self, *exc):
        if not any(exc):
            close_record(self.record, self.threads, self.warning)
        if self._limiter is not None:
            self._limiter.restore_original_limits()
        return False
