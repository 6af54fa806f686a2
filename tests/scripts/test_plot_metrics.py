"""scripts/plot_metrics.py reads what verl's own loggers write (file, tensorboard, console) and draws PNGs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_metrics.py"


@pytest.fixture(scope="module")
def pm():
    # loaded by path: verl installs a top-level package called `scripts`
    spec = importlib.util.spec_from_file_location("plot_metrics_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def _metrics(step: int, scale: float) -> dict:
    return {
        "critic/score/mean": scale * step / 10,
        "response_length/mean": 100.0 + 5 * step,
        "actor/entropy": 1.0 / (1 + step),
        "prm/score/mean": 0.5 + 0.01 * step,
        "critic/advantages/max": 1.0 + 0.1 * step,
        "critic/advantages/min": -1.0,
        "timing_s/step": 3.0,
    }


def _write_with_verl_loggers(tmp_path, monkeypatch, capsys):
    from verl.utils.logger.aggregate_logger import LocalLogger
    from verl.utils.tracking import FileLogger, _TensorboardAdapter

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "run_a.jsonl"))
    monkeypatch.setenv("TENSORBOARD_DIR", str(tmp_path / "tb" / "run_b"))
    file_logger = FileLogger("proj", "run_a")
    tb = _TensorboardAdapter("proj", "run_b")
    console = LocalLogger(print_to_console=True)
    capsys.readouterr()
    for step in range(1, 6):
        file_logger.log(_metrics(step, 1.0), step)
        tb.log({k: v for k, v in _metrics(step, 2.0).items() if k != "prm/score/mean"}, step)
        console.log(_metrics(step, 3.0) | {"adv/std": 0.3 * step}, step)
    file_logger.finish()
    tb.finish()
    (tmp_path / "run_c.log").write_text("some banner line\n" + capsys.readouterr().out)
    return tmp_path / "run_a.jsonl", tmp_path / "tb", tmp_path / "run_c.log"


def test_readers(pm, tmp_path, monkeypatch, capsys):
    jsonl, tb, console = _write_with_verl_loggers(tmp_path, monkeypatch, capsys)
    a = pm.read_run(jsonl)
    assert json.loads(jsonl.read_text().splitlines()[0])["step"] == 1
    assert a["critic/score/mean"] == [(s, s / 10) for s in range(1, 6)]
    b = pm.read_run(tb)
    assert [s for s, _ in b["response_length/mean"]] == [1, 2, 3, 4, 5]
    assert b["critic/score/mean"][-1][1] == pytest.approx(1.0)
    assert "prm/score/mean" not in b
    c = pm.read_run(console)
    assert c["critic/score/mean"][0] == (1, pytest.approx(0.3))
    assert c["adv/std"][-1] == (5, pytest.approx(1.5))


def test_panels_resolve_keys(pm):
    series = {"critic/advantages/max": [(1, 2.0), (2, 3.0)], "critic/advantages/min": [(1, -1.0), (2, -1.0)],
              "prpo/some_prm_score_mean": [(1, 0.4)]}
    panels = {p.name: p for p in pm.PANELS}
    key, pts = pm.resolve(panels["advantage_spread"], series)
    assert pts == [(1, 3.0), (2, 4.0)] and "max" in key
    key, _ = pm.resolve(panels["prm_score"], series)
    assert key == "prpo/some_prm_score_mean"
    assert pm.resolve(panels["entropy"], series) is None
    assert pm.smooth([1.0, 0.0, 0.0], 0.5) == [1.0, 0.5, 0.25]


def test_cli_draws_pngs_for_several_runs(pm, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    jsonl, tb, console = _write_with_verl_loggers(tmp_path, monkeypatch, capsys)
    out = tmp_path / "plots"
    rc = pm.main([f"grpo={jsonl}", f"prpo={tb}", str(console), "--out", str(out), "--smooth", "0.5",
                  "--key", "timing_s/step"])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"reward.png", "response_length.png", "entropy.png", "prm_score.png", "advantage_spread.png",
            "timing_s_step.png", "metrics.png"} <= names
    for n in names:
        assert (out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "grpo [critic/score/mean]" in text and "run_c [adv/std]" in text


def test_errors(pm, tmp_path, monkeypatch, capsys):
    assert pm.main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    assert pm.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    # matplotlib missing -> a clear message
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(SystemExit, match="needs matplotlib"):
        pm.plot({"r": {"critic/score/mean": [(1, 1.0)]}}, tmp_path / "o")


def test_list_keys(pm, tmp_path, monkeypatch, capsys):
    jsonl, _, _ = _write_with_verl_loggers(tmp_path, monkeypatch, capsys)
    assert pm.main([str(jsonl), "--list-keys"]) == 0
    assert "actor/entropy (5 points)" in capsys.readouterr().out
