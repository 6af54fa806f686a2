"""The testbed's third PRM: a *prefix* PRM, trained with a label at every token ("is everything so far still right?").

The step PRM (``build.train_prm``) reads a score at the end of each paragraph and judges that paragraph alone
(``task.step_labels``: a step that carries an earlier wrong value on with the right arithmetic is correct). PRPO's
entropy segmentation cuts responses anywhere, so the step PRM is read at places it never saw in training. This PRM is
trained where any segmentation may cut: every solution is cut at random token positions (from one cut to a cut after
every token), each piece is decoded with the policy tokenizer as the trainer does (``verl_prpo.prm.scoring``: a
blank piece joins the one before), the pieces go through the plugin's own ``TokenClassificationPRMAdapter``, and the
label read at each piece's separator is ``task.prefix_is_right(problem, text so far)``: 1 while the text so far can
still be continued into the right solution, 0 from the first wrong token on (monotone, not step-local).

Body from the SFT policy, same optimiser, steps, batch and learning rate as the step PRM (``TestbedSettings``); the
training solutions are the step PRM's (``build._prm_training_solution``). Saved under ``<testbed>/prefix_prm`` with
its own manifest ``prefix_prm.json``; version 3's is pinned in ``testbed_artifacts/v3/prefix_prm/`` with its own
``SHA256SUMS`` (the testbed's ``testbed.json`` and ``SHA256SUMS`` are unchanged). Command line::

    python -m examples.credit_assignment.prefix_prm [--out TESTBED_DIR] [--rebuild] [--pin]

Grid method ``prpo_prefix_prm`` (``grid.METHODS``) trains PRPO with it (``prm.model_path=<testbed>/prefix_prm``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from examples.credit_assignment import task
from examples.credit_assignment.build import (CHECKSUMS, DEFAULT_DIR, STEP_TAG, PinnedTestbedError, Testbed, _auc,
                                              _build_info, _fit, _params, _prm_training_solution, _sha256,
                                              artifacts_dir, build_testbed, checksum_mismatches, pad_prm_rows,
                                              read_checksums)

logger = logging.getLogger(__name__)

FOLDER = "prefix_prm"
MANIFEST = "prefix_prm.json"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class PrefixPRMSettings:
    """What determines the prefix PRM (besides the testbed it is built on: ``testbed_version``)."""

    testbed_version: int = 3
    steps: int = 1600  # the step PRM's budget (TestbedSettings.prm_steps)
    lr: float = 3e-4  # TestbedSettings.prm_lr
    batch_size: int = 64  # solutions per batch (TestbedSettings.batch_size)
    seed: int = 0
    eval_solutions_per_problem: int = 2
    version: int = 1


# ---------------------------------------------------------------------------------------------------- examples
def random_cuts(n_tokens: int, rng: random.Random) -> list[int]:
    """Cut positions c (token c starts a new piece) for a response of ``n_tokens`` tokens: first a number of cuts
    uniform in [0, n_tokens - 1], then that many distinct positions in [1, n_tokens). Sorted."""
    if n_tokens <= 1:
        return []
    n_cuts = rng.randint(0, n_tokens - 1)
    return sorted(rng.sample(range(1, n_tokens), n_cuts))


def pieces_at_cuts(tokenizer, ids: list[int], cuts: list[int]) -> list[tuple[str, int]]:
    """The pieces the trainer's PRM pipeline makes of ``ids`` cut at ``cuts``: (decoded text, end token index
    exclusive), a blank piece merged into the previous one (a leading blank piece into the next one)."""
    bounds = [0, *cuts, len(ids)]
    out: list[tuple[str, int]] = []
    pending = ""
    for a, b in zip(bounds[:-1], bounds[1:]):
        text = tokenizer.decode(ids[a:b], skip_special_tokens=True)
        if not text.strip():
            if out:
                out[-1] = (out[-1][0] + text, b)
            else:
                pending += text
            continue
        out.append((pending + text, b))
        pending = ""
    return out


def prefix_example(adapter, tokenizer, problem: task.Problem, solution: str, cuts: list[int] | None,
                   rng: random.Random | None = None):
    """PRM input ids, score positions and prefix labels of ``solution`` cut at ``cuts`` (random when None)."""
    ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    if cuts is None:
        cuts = random_cuts(len(ids), rng)
    pieces = pieces_at_cuts(tokenizer, ids, cuts)
    texts = [t for t, _ in pieces]
    labels, so_far = [], ""
    for t in texts:
        so_far += t
        labels.append(task.prefix_is_right(problem, so_far))
    x = adapter.build_inputs(problem.question, texts)
    return x.input_ids, x.score_positions, labels


def _batch(adapter, tokenizer, rng, exclude: set[str], n: int):
    rows = []
    while len(rows) < n:
        p = task.sample_problem(rng)
        if p.question in exclude:
            continue
        rows.append(prefix_example(adapter, tokenizer, p, _prm_training_solution(p, rng), None, rng))
    return pad_prm_rows(adapter, rows)


# ---------------------------------------------------------------------------------------------------- training
def _adapter(model, tokenizer):
    from verl_prpo.prm.adapters import TokenClassificationPRMAdapter

    return TokenClassificationPRMAdapter(model, tokenizer, step_separator=STEP_TAG, max_length=512,
                                         max_tokens_per_batch=512)


def heldout_stats(adapter, tokenizer, eval_problems, s: PrefixPRMSettings) -> dict:
    """Accuracy and AUC of ``adapter``'s PRM against prefix labels on held-out solutions, at random cuts and at
    paragraph ends (where the step PRM is read)."""
    import torch

    erng = random.Random(s.seed + 55)
    out = {}
    for name in ("random_cuts", "paragraph_ends"):
        questions, segs, labels = [], [], []
        for p in eval_problems:
            for _ in range(s.eval_solutions_per_problem):
                sol = _prm_training_solution(p, erng)
                ids = tokenizer(sol, add_special_tokens=False)["input_ids"]
                if name == "random_cuts":
                    cuts = random_cuts(len(ids), erng)
                else:
                    cuts = [i + 1 for i, t in enumerate(ids[:-1]) if "\n\n" in tokenizer.decode([t])]
                pieces = pieces_at_cuts(tokenizer, ids, cuts)
                so_far = ""
                for t, _ in pieces:
                    so_far += t
                    labels.append(int(task.prefix_is_right(p, so_far)))
                questions.append(p.question)
                segs.append([t for t, _ in pieces])
        with torch.no_grad():
            scores = [v for row in adapter.score(questions, segs) for v in row]
        out[name] = {"accuracy": sum((sc > 0.5) == bool(lab) for sc, lab in zip(scores, labels)) / len(labels),
                     "auc": _auc(scores, labels), "n": len(labels), "positive_fraction": sum(labels) / len(labels)}
    return out


def train_prefix_prm(tb: Testbed, s: PrefixPRMSettings, out_dir: Path, log_every: int = 160) -> dict:
    """Train the prefix PRM (body from the testbed's SFT policy) and save it in ``out_dir``; returns its stats."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForTokenClassification
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(tb.policy_dir)
    torch.manual_seed(s.seed + 2)
    rng = random.Random(s.seed + 44)
    exclude = {p.question for p in tb.eval_problems()}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the 2-class head is new by design
    try:
        model = Qwen2ForTokenClassification.from_pretrained(
            tb.policy_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1}, torch_dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.step_separator = STEP_TAG
    adapter = _adapter(model, tokenizer)

    def loss():
        ids, att, labels = _batch(adapter, tokenizer, rng, exclude, s.batch_size)
        logits = model(input_ids=ids, attention_mask=att).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)

    t0 = time.time()
    _fit(model, loss, steps=s.steps, lr=s.lr, name="prefix PRM", log_every=log_every)
    wall = time.time() - t0
    stats = heldout_stats(adapter, tokenizer, tb.eval_problems(), s)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"params": _params(model), "train_s": wall, **stats}


# ---------------------------------------------------------------------------------------------------- cache and pin
def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS)


def pinned_prefix_prm(s: PrefixPRMSettings, artifacts: Path | str | None = None) -> Path | None:
    """``<artifacts>/v<testbed_version>/prefix_prm`` when it holds these settings, checksums verified (raises
    ``PinnedTestbedError`` on a mismatch); else None."""
    root = (Path(artifacts) if artifacts is not None else artifacts_dir()) / f"v{s.testbed_version}" / FOLDER
    m = _read(root / MANIFEST)
    if m is None or m.get("settings") != asdict(s):
        return None
    bad = checksum_mismatches(root, read_checksums(root))
    if bad:
        raise PinnedTestbedError(f"pinned prefix PRM {root} does not match its {CHECKSUMS}:\n  " + "\n  ".join(bad)
                                 + f"\nRestore it with git checkout -- {root}, or retrain with --rebuild.")
    return root


def build_prefix_prm(tb: Testbed, s: PrefixPRMSettings | None = None, *, rebuild: bool = False,
                     artifacts: Path | str | None = None) -> Path:
    """The prefix PRM folder of testbed ``tb`` (``<tb.root>/prefix_prm``), in the order of ``build_testbed``: a
    local from-scratch build with these settings is kept; else the pinned one is copied (checksums verified); else it
    is trained (about 25 min on one core) with a logged warning. ``rebuild`` always trains."""
    s = s or PrefixPRMSettings()
    if s.testbed_version != tb.settings.version:
        raise ValueError(f"prefix PRM settings are for testbed version {s.testbed_version}, the testbed is version "
                         f"{tb.settings.version}")
    dest = tb.root / FOLDER
    cached = _read(dest / MANIFEST)
    same = cached is not None and cached.get("settings") == asdict(s)
    if not rebuild:
        if same and cached.get("origin") == "built":
            return dest
        pinned = pinned_prefix_prm(s, artifacts)
        if pinned is not None:
            sums = read_checksums(pinned)
            if not (same and not checksum_mismatches(dest, sums)):
                logger.info("prefix PRM: installing the pinned %s into %s", pinned, dest)
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir(parents=True)
                for rel in sorted(sums, key=lambda r: r == MANIFEST):  # the manifest last
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(pinned / rel, dest / rel)
                bad = checksum_mismatches(dest, sums)
                if bad:
                    raise PinnedTestbedError(f"copy of {pinned} into {dest} does not match:\n  " + "\n  ".join(bad))
            return dest
        if same:
            return dest
        logger.warning("prefix PRM: none pinned for these settings; training it (about 25 min on one core)")
    info = _build_info()
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.time()
    stats = train_prefix_prm(tb, s, dest)
    manifest = {"settings": asdict(s), "testbed": {"version": tb.settings.version, "origin": tb.origin},
                "labels": "task.prefix_is_right at the separator after every piece of a random cut",
                "prefix_prm": stats, "build_s": time.time() - t0, "origin": "built", "build": info}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    logger.info("prefix PRM built in %.0f s: %s", time.time() - t0, json.dumps(stats))
    return dest


def pin_prefix_prm(folder: Path, artifacts: Path | str | None = None) -> Path:
    """Copy a built prefix PRM ``folder`` to ``<artifacts>/v<testbed_version>/prefix_prm`` with its ``SHA256SUMS``
    (never overwrites)."""
    m = _read(folder / MANIFEST)
    if m is None:
        raise ValueError(f"{folder} holds no built prefix PRM ({MANIFEST} missing)")
    missing = [r for r in REQUIRED if not (folder / r).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a complete prefix PRM: {missing} missing")
    dest = (Path(artifacts) if artifacts is not None else artifacts_dir()) / f"v{m['settings']['testbed_version']}" / FOLDER
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists: a pinned prefix PRM is never overwritten (bump its version)")
    dest.mkdir(parents=True)
    files = [r for r in _files(folder) if r != MANIFEST]
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, dest / rel)
    (dest / MANIFEST).write_text(json.dumps({**m, "origin": "pinned"}, indent=1) + "\n")
    (dest / CHECKSUMS).write_text("".join(f"{_sha256(dest / rel)}  {rel}\n" for rel in [*files, MANIFEST]))
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_DIR), help="the testbed folder (the prefix PRM goes in prefix_prm/)")
    p.add_argument("--rebuild", action="store_true", help="train it even when a pinned or cached one exists")
    p.add_argument("--pin", action="store_true", help="then pin it in testbed_artifacts/v<version>/prefix_prm")
    p.add_argument("--artifacts", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tb = build_testbed(args.out, artifacts=args.artifacts)
    folder = build_prefix_prm(tb, rebuild=args.rebuild, artifacts=args.artifacts)
    if args.pin:
        logger.info("prefix PRM: pinned as %s", pin_prefix_prm(folder, args.artifacts))
    print(json.dumps(_read(folder / MANIFEST), indent=1))


if __name__ == "__main__":
    main()
