"""The PRM's accuracy where each segmentation cuts, on the step-0 policy's own rollouts (issue 22).

PRPO reads the PRM at the last token of each segment. With ``entropy`` segments the segments end wherever the
policy's entropy spikes, not where the PRM was trained to read (paragraph ends). This module measures, per
segmentation strategy, how well the score PRPO would give each segment separates the segments that contain the
response's first wrong step from those that do not:

1. sample ``--samples`` responses per held-out problem from the SFT (step-0) policy (T = 1, Hugging Face
   ``generate``, fp32), and the policy's full-vocabulary entropy at every response token (a teacher-forced fp32
   forward, what the actor computes);
2. segment every response with ``verl_prpo.segmentation.segment`` as the grid's PRPO does (``entropy``,
   ``uniform``, ``random``, ``newline``; k = 5, m = 4);
3. score every segment with the plugin's own pipeline (``verl_prpo.prm.scoring.score_batch``: segment texts from
   the policy tokens, the token-classification adapter, the score at the separator after the segment) for the step
   PRM and the prefix PRM;
4. label each segment by character overlap with the response's first wrong step (``task.first_wrong_step``:
   the first paragraph ``task.step_labels`` marks wrong) and by ``task.prefix_is_right`` of the text up to the
   segment's end;
5. AUC per strategy and PRM (95 % bootstrap over responses, :mod:`examples.credit_assignment.intervals`):
   ``first_wrong_vs_rest``: P(score of a segment without the first wrong step > score of a segment with it);
   ``first_wrong_vs_right_prefix``: the same against the segments whose whole prefix is still right;
   ``prefix_label``: the score against ``prefix_is_right`` at the segment's end (the prefix PRM's training label);
6. where the entropy cuts fall: the token that starts each segment (the spike), by its role in the step line
   (left operand, operator, operand, "=", result digits, the paragraph break, the answer line, EOS), against the
   same counts for ``uniform`` and ``random`` cuts.

    python -m examples.credit_assignment.prm_at_cuts [--samples 4] [--out benchmarks/results/prm_at_cuts]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

import torch

from examples.credit_assignment import task

STRATEGIES = ("entropy", "uniform", "random", "newline")
K_CUTS, MIN_GAP = 5, 4  # the grid's PRPO: algorithm.prpo.k (default 5), algorithm.prpo.m=4
ROLES = ("left operand", "operator", "operand", "equals", "result", "paragraph break", "answer line", "eos",
         "other")
_LINE = re.compile(r"^(\d+)( [+\-*] )(\d+)( = )(\d+)$")


# ---------------------------------------------------------------------------------------------------- rollouts
@torch.no_grad()
def sample_rollouts(model, tokenizer, problems: list[task.Problem], samples: int, seed: int,
                    max_new_tokens: int = 64, batch_size: int = 256):
    """Responses (B, T) ids padded with pad, mask (B, T) up to and including the first EOS, entropy (B, T) of the
    fp32 policy at each response token, and the problem of each row."""
    from examples.credit_assignment.task import prompt_ids
    from examples.credit_assignment.evaluate import left_pad, response_valid_mask

    rows = [p for p in problems for _ in range(samples)]
    torch.manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    resp, ents = [], []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b: b + batch_size]
        ids, att = left_pad([prompt_ids(tokenizer, p.question) for p in chunk], pad)
        out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad)
        gen = out[:, ids.shape[1]:]
        full_att = torch.cat([att, response_valid_mask(gen, eos).long()], 1)
        logits = model(input_ids=out, attention_mask=full_att).logits[:, ids.shape[1] - 1: -1].float()
        logp = torch.log_softmax(logits, -1)
        ents.append(-(logp.exp() * logp).sum(-1))
        resp.append(gen)
    width = max(r.shape[1] for r in resp)
    responses = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad) for r in resp])
    entropy = torch.cat([torch.nn.functional.pad(e, (0, width - e.shape[1])) for e in ents])
    mask = response_valid_mask(responses, eos)
    return responses, mask, entropy * mask, rows


# ---------------------------------------------------------------------------------------------------- labels
def char_ends(tokenizer, ids: list[int]) -> list[int]:
    """Character offset in the decoded response text (special tokens skipped) after each token."""
    return [len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True)) for t in range(len(ids))]


def segment_labels(problem: task.Problem, text: str, spans: list[tuple[int, int]]) -> list[dict]:
    """Per segment (character span [a, b) of ``text``): ``first_wrong`` (it overlaps the first wrong step),
    ``right_prefix`` (all text up to its end is still right) and ``after`` (it lies after the first wrong step)."""
    bad = task.first_wrong_step(problem, text)
    out = []
    for a, b in spans:
        first_wrong = bad is not None and a < bad[1] and b > bad[0] and b > a
        out.append({"first_wrong": bool(first_wrong), "right_prefix": task.prefix_is_right(problem, text[:b]),
                    "after": bad is not None and a >= bad[1]})
    return out


def token_role(text: str, a: int, b: int) -> str:
    """The role of the characters [a, b) of a response ``text`` (one token) in its step line (see ``ROLES``)."""
    if a >= len(text):
        return "eos"
    piece = text[a:b]
    if "\n" in piece:
        return "paragraph break"
    start = text.rfind("\n", 0, a) + 1
    end = text.find("\n", a)
    line = text[start: end if end >= 0 else len(text)]
    if line.startswith(task.ANSWER_PREFIX[:3]) or "boxed" in line:
        return "answer line"
    m = _LINE.match(line)
    if not m:
        return "other"
    if not piece.strip():
        pos = b - start  # a lone space: the role of what follows it
    else:
        pos = a - start + (len(piece) - len(piece.lstrip(" ")))  # a token " 5": its role is the digit's
    bounds = [0]
    for g in m.groups():
        bounds.append(bounds[-1] + len(g))
    names = ("left operand", "operator", "operand", "equals", "result")
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        if lo <= pos < hi:
            return name
    return "other"


# ---------------------------------------------------------------------------------------------------- analysis
def _prm_adapter(path: Path):
    from transformers import AutoTokenizer, Qwen2ForTokenClassification

    from examples.credit_assignment.build import STEP_TAG
    from verl_prpo.prm.adapters import TokenClassificationPRMAdapter

    model = Qwen2ForTokenClassification.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return TokenClassificationPRMAdapter(model, tok, step_separator=STEP_TAG, max_length=512,
                                         max_tokens_per_batch=8192)


def analyse(tb, prms: dict[str, Path], *, samples: int = 4, seed: int = 0, log=print) -> dict:
    from verl_prpo.prm.scoring import score_batch
    from verl_prpo.segmentation import build_newline_token_mask, segment

    from examples.credit_assignment import intervals as iv
    from examples.credit_assignment.evaluate import load_policy

    t0 = time.time()
    policy, tokenizer = load_policy(tb.policy_dir)
    problems = tb.eval_problems()
    responses, mask, entropy, rows = sample_rollouts(policy, tokenizer, problems, samples, seed,
                                                     tb.settings.max_response_length)
    log(f"sampled {len(rows)} responses in {time.time() - t0:.0f} s")
    ids_list = [responses[i][mask[i]].tolist() for i in range(len(rows))]
    texts = [tokenizer.decode(x, skip_special_tokens=True) for x in ids_list]
    ends = [char_ends(tokenizer, x) for x in ids_list]
    n_wrong_step = sum(task.first_wrong_step(p, t) is not None for p, t in zip(rows, texts))
    n_correct = sum(task.is_correct(p, t) for p, t in zip(rows, texts))
    nl_mask = build_newline_token_mask(tokenizer, policy.config.vocab_size)
    adapters = {name: _prm_adapter(path) for name, path in prms.items()}
    questions = [p.question for p in rows]
    result = {"responses": len(rows), "problems": len(problems), "samples_per_problem": samples, "seed": seed,
              "correct_responses": n_correct, "responses_with_a_wrong_step": n_wrong_step,
              "k": K_CUTS, "m": MIN_GAP, "strategies": {}, "entropy_spikes": {}}
    for strategy in STRATEGIES:
        seg = segment(strategy, mask.long(), entropy=entropy, k=K_CUTS, m=MIN_GAP, seed=seed,
                      newline_token_mask=nl_mask, responses=responses)
        sid = seg.segment_ids
        # per segment: token span, char span, labels
        segs = []  # (response index, first token, last token)
        for i in range(len(rows)):
            valid = sid[i][mask[i]]
            for s in range(int(valid.max()) + 1 if valid.numel() else 0):
                where = torch.nonzero(valid == s).flatten()
                segs.append((i, int(where[0]), int(where[-1])))
        labels, blank = [], []
        for i, a, b in segs:
            ca = ends[i][a - 1] if a > 0 else 0
            labels.append(segment_labels(rows[i], texts[i], [(ca, ends[i][b])])[0])
            # an EOS-only or whitespace-only segment has no score of its own (the pipeline merges it into the
            # previous step): left out of the AUCs
            blank.append(not texts[i][ca: ends[i][b]].strip())
        roles = Counter()
        for i, a, _ in segs:
            if a > 0:  # the token that starts a segment (a cut)
                roles[token_role(texts[i], ends[i][a - 1], ends[i][a])] += 1
        result["entropy_spikes"][strategy] = {r: roles.get(r, 0) for r in ROLES}
        entry = {"segments": len(segs), "segments_per_response": len(segs) / len(rows), "blank_segments": sum(blank),
                 "first_wrong_segments": sum(lab["first_wrong"] for lab in labels), "prms": {}}
        for name, adapter in adapters.items():
            scores, _ = score_batch(adapter, tokenizer, responses, mask.long(), sid, questions)
            use = [j for j in range(len(segs)) if not blank[j]]
            seg_scores = [float(scores[segs[j][0], segs[j][1]]) for j in use]
            groups = [segs[j][0] for j in use]
            labs = [labels[j] for j in use]
            ok_vs_rest = [int(not lab["first_wrong"]) for lab in labs]
            keep = [j for j, lab in enumerate(labs) if lab["first_wrong"] or lab["right_prefix"]]
            entry["prms"][name] = {
                "first_wrong_vs_rest": iv.bootstrap_auc(seg_scores, ok_vs_rest, groups),
                "first_wrong_vs_right_prefix": iv.bootstrap_auc([seg_scores[j] for j in keep],
                                                                [ok_vs_rest[j] for j in keep],
                                                                [groups[j] for j in keep]),
                "prefix_label": iv.bootstrap_auc(seg_scores, [int(lab["right_prefix"]) for lab in labs], groups),
                "mean_score": sum(seg_scores) / len(seg_scores),
                "mean_score_first_wrong": _mean([s for s, lab in zip(seg_scores, labs) if lab["first_wrong"]]),
                "mean_score_right_prefix": _mean([s for s, lab in zip(seg_scores, labs) if lab["right_prefix"]]),
            }
        result["strategies"][strategy] = entry
        log(f"{strategy}: {len(segs)} segments, " + ", ".join(
            f"{n} AUC {v['first_wrong_vs_rest']['mean']:.3f}" for n, v in entry["prms"].items()))
    result["wall_s"] = time.time() - t0
    return result


def _mean(x: list[float]) -> float | None:
    return sum(x) / len(x) if x else None


def markdown(res: dict) -> str:
    def ci(d):
        return f"{d['mean']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]" if d.get("lo") is not None else f"{d['mean']:.3f}"

    prms = list(next(iter(res["strategies"].values()))["prms"])
    lines = ["| segmentation | segments / response | PRM | AUC: first wrong step vs rest | vs right prefixes | "
             "AUC vs prefix label | mean score (all / first-wrong / right-prefix) |",
             "|---|---:|---|---:|---:|---:|---|"]
    for s, e in res["strategies"].items():
        for name in prms:
            v = e["prms"][name]
            f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            lines.append(f"| {s} | {e['segments_per_response']:.2f} | {name} | {ci(v['first_wrong_vs_rest'])} | "
                         f"{ci(v['first_wrong_vs_right_prefix'])} | {ci(v['prefix_label'])} | "
                         f"{f(v['mean_score'])} / {f(v['mean_score_first_wrong'])} / "
                         f"{f(v['mean_score_right_prefix'])} |")
    lines += ["", "Where the cuts fall (the token that starts a segment), share of cuts:", "",
              "| segmentation | cuts | " + " | ".join(ROLES) + " |", "|---|---:|" + "---:|" * len(ROLES)]
    for s, c in res["entropy_spikes"].items():
        total = sum(c.values())
        lines.append(f"| {s} | {total} | " + " | ".join(f"{c[r] / max(total, 1):.2f}" for r in ROLES) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4, help="responses per held-out problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--testbed", default=None)
    p.add_argument("--out", default="benchmarks/results/prm_at_cuts", help="writes <out>.json and <out>.md")
    p.add_argument("--no-prefix-prm", action="store_true",
                   help="the step PRM only (the prefix PRM is built on first use otherwise: about 25 min)")
    args = p.parse_args(argv)
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed
    from examples.credit_assignment.prefix_prm import build_prefix_prm

    tb = build_testbed(args.testbed or DEFAULT_DIR)
    prms = {"step PRM": tb.prm_dir}
    if not args.no_prefix_prm:
        prms["prefix PRM"] = build_prefix_prm(tb)
    res = analyse(tb, prms, samples=args.samples, seed=args.seed)
    res["command"] = "python -m examples.credit_assignment.prm_at_cuts " + " ".join(argv or [])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
