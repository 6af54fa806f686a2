"""The pinned testbed: ``build_testbed`` copies a checksum-verified artefact instead of training, refuses a damaged
one, keeps local from-scratch builds, and trains only when asked or for settings no artefact has. The committed
artefact itself: present for the current settings, verified, small, outside the package, with vLLM-ready shapes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from examples.credit_assignment import build
from examples.credit_assignment.build import CHECKSUMS, PinnedTestbedError, build_testbed, pin_testbed, pinned_testbed, read_checksums

# the classes by their module (pytest would try to collect names starting with "Test")
Settings = build.TestbedSettings

REPO = Path(__file__).resolve().parents[2]


def _fake_built_testbed(root: Path, s: Settings) -> build.Testbed:
    """A folder laid out like a from-scratch build (tiny stand-in files), with its manifest."""
    files = {"tokenizer/tokenizer.json": b"{}", "policy/config.json": b'{"a": 1}',
             "policy/model.safetensors": bytes(range(256)) * 4, "prm/model.safetensors": b"\x00prm" * 100,
             "data/eval.jsonl": b'{"start": 7, "ops": [["add", 5]]}\n', "data/train.parquet": b"PAR1 fake",
             "data/eval.parquet": b"PAR1 eval", "prm/config.json": b'{"b": 2}'}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "policy_stage.json").write_text("{}")  # build-internal: never pinned
    manifest = {"settings": dataclasses.asdict(s), "origin": "built", "build_s": 12.0,
                "build": {"command": "python -m examples.credit_assignment.build --rebuild"},
                "policy": {"params": 10, "sft_accuracy": 0.4, "sft_greedy_accuracy": 0.9},
                "prm": {"params": 12, "step_accuracy": 0.95, "step_auc": 0.97}}
    (root / "testbed.json").write_text(json.dumps(manifest))
    return build.Testbed(root, s, manifest)


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """A fake testbed pinned under tmp_path/artifacts; training from scratch fails the test unless a test allows it."""
    s = Settings()
    src = _fake_built_testbed(tmp_path / "src", s)
    artifacts = tmp_path / "artifacts"
    dest = pin_testbed(src, artifacts)
    calls = []

    def no_training(tb, *, rebuild):
        calls.append((tb.root, tb.settings, rebuild))
        raise AssertionError("trained from scratch")

    monkeypatch.setattr(build, "_build_from_scratch", no_training)
    return s, artifacts, dest, calls


def test_pin_writes_the_testbed_files_checksums_and_readme(pinned):
    s, artifacts, dest, _ = pinned
    assert dest == artifacts / f"v{s.version}"
    sums = read_checksums(dest)
    assert sorted(sums) == ["data/eval.jsonl", "data/eval.parquet", "data/train.parquet", "policy/config.json",
                            "policy/model.safetensors", "prm/config.json", "prm/model.safetensors", "testbed.json",
                            "tokenizer/tokenizer.json"]
    assert not (dest / "policy_stage.json").exists()
    import hashlib

    assert sums["policy/model.safetensors"] == hashlib.sha256(bytes(range(256)) * 4).hexdigest()
    assert json.loads((dest / "testbed.json").read_text())["origin"] == "pinned"
    assert "--rebuild" in (dest / "README.md").read_text()
    with pytest.raises(FileExistsError, match="never overwritten"):
        pin_testbed(build.Testbed(dest, s, json.loads((dest / "testbed.json").read_text())), artifacts)


def test_pin_refuses_an_incomplete_testbed(tmp_path):
    tb = _fake_built_testbed(tmp_path / "src", Settings())
    (tb.root / "prm" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"prm/model\.safetensors"):
        pin_testbed(tb, tmp_path / "artifacts")
    assert not (tmp_path / "artifacts").exists()


def test_build_copies_the_pinned_testbed_without_training(pinned, tmp_path):
    s, artifacts, dest, calls = pinned
    out = tmp_path / "cache"
    (out / "runs").mkdir(parents=True)  # an earlier version's cache with a training run in it
    (out / "policy").mkdir()
    (out / "policy" / "stale.bin").write_text("v2")
    (out / "testbed.json").write_text(json.dumps({"settings": {**dataclasses.asdict(s), "version": 2}}))
    tb = build_testbed(out, artifacts=artifacts)
    assert calls == [] and tb.origin == "pinned" and tb.root == out.resolve()
    for rel in read_checksums(dest):
        assert (out / rel).read_bytes() == (dest / rel).read_bytes(), rel
    assert not (out / "policy" / "stale.bin").exists() and (out / "runs").is_dir()
    assert tb.manifest["settings"] == dataclasses.asdict(s)
    # a second call finds the identical copy
    mtime = (out / "policy" / "model.safetensors").stat().st_mtime_ns
    build_testbed(out, artifacts=artifacts)
    assert (out / "policy" / "model.safetensors").stat().st_mtime_ns == mtime


def test_damaged_cache_copy_is_replaced(pinned, tmp_path):
    s, artifacts, dest, _ = pinned
    out = tmp_path / "cache"
    build_testbed(out, artifacts=artifacts)
    (out / "prm" / "model.safetensors").write_bytes(b"truncated")
    build_testbed(out, artifacts=artifacts)
    assert (out / "prm" / "model.safetensors").read_bytes() == (dest / "prm" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "delete", "lfs_pointer"])
def test_damaged_pinned_testbed_is_refused_with_the_file_named(pinned, tmp_path, damage):
    s, artifacts, dest, calls = pinned
    f = dest / "policy" / "model.safetensors"
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[100] ^= 1
        f.write_bytes(bytes(data))
    elif damage == "delete":
        f.unlink()
    else:
        f.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1024\n")
    with pytest.raises(PinnedTestbedError, match=r"policy/model\.safetensors: (missing|SHA-256)") as err:
        build_testbed(tmp_path / "cache", artifacts=artifacts)
    assert "git checkout" in str(err.value) and "--rebuild" in str(err.value)
    assert calls == [] and not (tmp_path / "cache" / "testbed.json").exists()


def test_missing_checksums_file_is_refused(pinned, tmp_path):
    s, artifacts, dest, _ = pinned
    (dest / CHECKSUMS).unlink()
    with pytest.raises(PinnedTestbedError, match=CHECKSUMS):
        build_testbed(tmp_path / "cache", artifacts=artifacts)


def test_local_build_is_kept_and_rebuild_or_other_settings_train(pinned, tmp_path, monkeypatch):
    s, artifacts, dest, calls = pinned
    local = _fake_built_testbed(tmp_path / "local", s)  # origin "built", same settings: the user asked for it
    tb = build_testbed(local.root, artifacts=artifacts)
    assert tb.origin == "built" and calls == []
    assert (local.root / "policy_stage.json").exists()
    trained = []
    monkeypatch.setattr(build, "_build_from_scratch", lambda tb, *, rebuild: trained.append((tb.settings, rebuild)))
    build_testbed(tmp_path / "cache", artifacts=artifacts, rebuild=True)
    other = dataclasses.replace(s, seed=1)
    build_testbed(tmp_path / "cache", other, artifacts=artifacts)
    build_testbed(tmp_path / "cache", artifacts=tmp_path / "nowhere")
    assert trained == [(s, True), (other, False), (s, False)]


def test_pinned_testbed_ignores_an_artefact_of_other_settings(pinned):
    s, artifacts, dest, _ = pinned
    assert pinned_testbed(s, artifacts) == dest
    assert pinned_testbed(dataclasses.replace(s, prm_lr=1e-3), artifacts) is None


# ---------------------------------------------------------------------------------------------------- the committed one
def test_the_committed_artefact_matches_the_current_settings_and_verifies(monkeypatch):
    monkeypatch.delenv(build.ARTIFACTS_ENV, raising=False)
    s = Settings()
    assert build.artifacts_dir() == REPO / "testbed_artifacts"  # found from the checkout
    root = pinned_testbed(s)
    assert root == REPO / "testbed_artifacts" / f"v{s.version}"
    sums = read_checksums(root)
    assert {"policy/model.safetensors", "prm/model.safetensors", "data/train.parquet", "data/eval.parquet",
            "data/eval.jsonl", "tokenizer/tokenizer.json", "testbed.json"} <= set(sums)
    assert not any(rel.endswith((".bin", ".pt")) for rel in sums)  # safetensors only
    assert sum((root / rel).stat().st_size for rel in sums) < 8 * 2**20
    manifest = json.loads((root / "testbed.json").read_text())
    assert manifest["origin"] == "pinned" and manifest["build"]["command"]
    # pip does not install it: outside the package, and no package found under it
    from setuptools import find_packages

    assert not (REPO / "verl_prpo" / "testbed_artifacts").exists()
    assert not [p for p in find_packages(str(REPO), include=["verl_prpo", "verl_prpo.*"]) if "artifact" in p]


def test_the_committed_models_have_head_sizes_vllm_cpu_accepts():
    from transformers import AutoConfig

    s = Settings()
    root = pinned_testbed(s, REPO / "testbed_artifacts")
    policy, prm = AutoConfig.from_pretrained(root / "policy"), AutoConfig.from_pretrained(root / "prm")
    for cfg in (policy, prm):
        assert cfg.hidden_size // cfg.num_attention_heads == 32
        assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (s.policy_heads, s.policy_kv_heads)
    assert prm.num_labels == 2 and prm.hidden_size == policy.hidden_size
    # vLLM's own list (the CPU attention backend), when vLLM is installed
    pytest.importorskip("vllm")
    from verl_prpo.cpu.vllm_rollout import head_size, supported_head_sizes

    assert head_size(policy) in supported_head_sizes()
