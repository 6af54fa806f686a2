"""The ``gpu`` extra installs what verl 0.9.1 was built and tested with (issue 9, item 11).

It must delegate to verl's own extras (``verl[vllm,fsdp]==0.9.1``) instead of naming ``vllm`` / ``flash-attn``
unpinned. The pins those extras carry are read from the installed verl's metadata, so the test also documents
what the README promises (vLLM 0.24.0, torch 2.11.0, flash-attn 2.8.3 built for CUDA 13.0 + torch 2.11).
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import requires
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _extras() -> dict:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def _verl_extra(name: str) -> list[str]:
    return [r.split(";")[0].strip() for r in requires("verl") if re.search(rf'extra == "{re.escape(name)}"', r)]


def test_gpu_extra_delegates_to_verls_pinned_extras():
    gpu = _extras()["gpu"]
    assert gpu == ["verl[vllm,fsdp]==0.9.1"]
    for req in gpu:  # nothing of our own that pip could resolve to a version verl was not built for
        assert not re.match(r"^(vllm|flash[-_]attn)\b", req)
    vllm = _verl_extra("vllm")
    assert "vllm==0.24.0" in vllm and "torch==2.11.0" in vllm
    fsdp = _verl_extra("fsdp")
    assert "verl[flash-attn-cu130torch211]" in fsdp and "torch==2.11.0" in fsdp
    assert _verl_extra("flash-attn-cu130torch211") == ["flash-attn==2.8.3"]


def test_readme_names_the_cuda_build():
    text = (REPO / "README.md").read_text()
    for needle in ("verl[vllm,fsdp]==0.9.1", "vllm==0.24.0", "torch==2.11.0", "flash-attn==2.8.3", "CUDA 13.0"):
        assert needle in text, needle
