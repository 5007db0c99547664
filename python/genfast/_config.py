"""genfast.show_config(): what was built, and what this process can use."""

from __future__ import annotations

import os
import platform

from . import _backend as be


def config() -> dict:
    """Build and runtime configuration as a dict (what show_config prints)."""
    core = dict(be._core.build_info())
    usable, why = be.cuda_status()
    info = {
        "version": core["version"],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": ["cpu"] + (["cuda"] if be._cuda is not None else []),
        "cpu": {
            "compiler": core["compiler"],
            "flags": core["flags"],
            "simd": core["simd"],
            "openmp": core["openmp"],
            "openmp_threads": be._core.openmp_max_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "cuda": {"built": be._cuda is not None, "usable": usable, "status": why},
    }
    if be._cuda is not None:
        info["cuda"].update(dict(be._cuda.build_info()))
    return info


def show_config() -> None:
    """Print the version, the backends built, OpenMP threads, CUDA usability and flags."""
    info = config()
    print(f"genfast {info['version']} (python {info['python']}, {info['platform']})")
    print(f"backends built: {', '.join(info['backends'])}")
    cpu = info["cpu"]
    print("cpu (_core):")
    print(f"  compiler:        {cpu['compiler']}")
    print(f"  flags:           {cpu['flags']}")
    print(f"  simd:            {cpu['simd']}")
    print(f"  openmp:          {cpu['openmp']}, {cpu['openmp_threads']} threads"
          + (f" (OMP_NUM_THREADS={cpu['OMP_NUM_THREADS']})" if cpu["OMP_NUM_THREADS"] else ""))
    cuda = info["cuda"]
    print("cuda (_cuda):")
    print(f"  built:           {'yes' if cuda['built'] else 'no'}")
    for key in ("cuda_version", "architectures", "flags"):
        if key in cuda:
            print(f"  {key + ':':<16} {cuda[key]}")
    print(f"  device usable:   {'yes' if cuda['usable'] else 'no'} ({cuda['status']})")
