"""CPU mode: step time of PRPO against GRPO with a PRM ~4.7x the policy, and where the PRM stage's time goes.

Runs verl's own trainer twice in CPU mode (``examples.credit_assignment.quickstart.build_command``: hf rollout, FSDP2 actor, the PRM
worker group), once with ``grpo`` and once with ``prpo``, on the tiny local assets with the PRM rebuilt so that its
parameter count is about ``--ratio`` (default 4.7, the paper's 7B PRM / 1.5B policy) times the policy's. Reads
verl's per-step metrics from the JSON-lines file logger and prints the median step time of each (the first step is
a warm-up and is left out), the ratio, and the median ``timing_s/*`` stages.

Then it replays one PRPO batch of the same shape in this process, with the same PRM and tokenizers, to split the
PRM stage (``timing_s/prm``, measured by the trainer around the worker-group call) into

* decode: policy tokens -> segment texts (``segment_texts``, policy tokenizer);
* retokenise: segment texts -> PRM input ids and score positions (``adapter.build_inputs``, PRM tokenizer);
* forward: the packed PRM forwards and the read-out of the scores;
* offload: moving the PRM to the device and back (0 on CPU: the worker only offloads with CUDA; timed here as one
  state-dict copy each way, what a CUDA offload would move);
* transfer and dispatch: the rest of ``timing_s/prm``: the Ray round trip of the batch to the PRM worker and back,
  the TransferQueue read of the prompts, the padding to the world size.

Usage: ``python benchmarks/bench_cpu_step.py [--steps 5] [--ratio 4.7] [--out /tmp/bench_cpu_step]``
(a few minutes of CPU; numbers depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


import torch


def param_count(config, cls) -> int:
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())


def choose_prm_shape(tokenizer, policy_params: int, ratio: float) -> tuple[int, int, int]:
    """(hidden, layers, params) of the token-classification PRM closest to ``ratio`` x the policy's parameters."""
    from transformers import Qwen2ForTokenClassification

    from examples.credit_assignment.tiny_assets import _qwen2_config

    best = None
    for hidden in (64, 96, 128, 160, 192, 256):
        for layers in range(1, 9):
            cfg = _qwen2_config(tokenizer, hidden_size=hidden, num_layers=layers, max_positions=4096, num_labels=2)
            n = param_count(cfg, Qwen2ForTokenClassification)
            err = abs(n / policy_params - ratio)
            if best is None or err < best[0]:
                best = (err, hidden, layers, n)
    return best[1], best[2], best[3]


def run(estimator: str, assets, out: Path, steps: int, extra: list[str]) -> tuple[list[dict], float]:
    from examples.credit_assignment.quickstart import build_command

    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    if metrics_file.exists():
        metrics_file.unlink()
    cmd, env = build_command(estimator, assets_dir=assets.root, steps=steps, out_dir=out, metrics_file=metrics_file,
                             extra=extra, python=sys.executable)
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=out, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (out / "log.txt").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{estimator} run failed (rc={proc.returncode}):\n{tail}")
    lines = [json.loads(ln) for ln in metrics_file.read_text().splitlines() if ln.strip()]
    return [r.get("data", r) for r in lines], wall  # verl's file logger: {"step": n, "data": {metrics}}


def med(records: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in records if key in r]
    return statistics.median(vals) if vals else float("nan")


def replay_prm_stage(assets, batch: int, response_len: int, k: int, repeats: int = 5) -> dict[str, float]:
    """The worker side of one PRM stage, piece by piece, on a batch of the runs' shape."""
    from transformers import AutoTokenizer

    from examples.credit_assignment.tiny_assets import arithmetic_problems
    from verl_prpo.prm.adapters import load_prm
    from verl_prpo.prm.config import PRMConfig
    from verl_prpo.prm.scoring import segment_texts

    policy_tok = AutoTokenizer.from_pretrained(str(assets.policy_dir))
    adapter = load_prm(PRMConfig.from_config({"enable": True, "model_path": str(assets.prm_dir),
                                              "adapter": "token_classification"}), "cpu")
    rows = arithmetic_problems(batch, seed=3)
    questions = [r["problem"] for r in rows]
    ids = []
    for r in rows:
        t = policy_tok(r["solution"] * 4, add_special_tokens=False)["input_ids"][: response_len - 1]
        ids.append(t + [policy_tok.eos_token_id] * (response_len - len(t)))
    responses = torch.tensor(ids)
    mask = torch.ones_like(responses)
    seg = torch.div(torch.arange(response_len) * (k + 1), response_len, rounding_mode="floor").expand(batch, -1)

    def best(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t0)
        return min(ts), out

    t_decode, texts = best(lambda: segment_texts(policy_tok, responses, mask, seg))
    t_build, inputs = best(lambda: [adapter.build_inputs(q, s) for q, s in zip(questions, texts)])
    t_total, _ = best(lambda: adapter.score_with_stats(questions, texts))
    sd = {n: p.detach() for n, p in adapter.model.state_dict().items()}
    t_copy, _ = best(lambda: {n: p.clone() for n, p in sd.items()})
    return {"decode": t_decode, "retokenise": t_build, "forward": max(t_total - t_build, 0.0), "offload": 0.0,
            "offload_if_cuda_state_dict_copy_x2": 2 * t_copy,
            "prm_tokens": sum(len(x.input_ids) for x in inputs)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="training steps per run (the first is a warm-up)")
    p.add_argument("--ratio", type=float, default=4.7, help="PRM parameters / policy parameters")
    p.add_argument("--out", default="/tmp/verl_prpo_bench_cpu_step")
    p.add_argument("--estimators", default="grpo,prpo")
    p.add_argument("--concurrent", action="store_true",
                   help="run the estimators at the same time, so that on a shared machine both see the same load "
                        "(each then gets about half of an idle machine: the ratio, not the seconds, is the figure)")
    args = p.parse_args(argv)
    os.environ.setdefault("VERL_PLATFORM", "cpu")

    from transformers import AutoConfig, AutoTokenizer, Qwen2ForCausalLM

    from examples.credit_assignment.tiny_assets import build_prm, build_tiny_assets

    root = Path(args.out)
    assets = build_tiny_assets(root / "assets", n_train=64, n_val=8)
    tok = AutoTokenizer.from_pretrained(str(assets.tokenizer_dir))
    policy_params = param_count(AutoConfig.from_pretrained(str(assets.policy_dir)), Qwen2ForCausalLM)
    hidden, layers, prm_params = choose_prm_shape(tok, policy_params, args.ratio)
    build_prm(assets.prm_dir, tok, hidden_size=hidden, num_layers=layers, seed=1)
    print(f"policy {policy_params:,} parameters; PRM hidden {hidden} x {layers} layers = {prm_params:,} parameters "
          f"({prm_params / policy_params:.2f}x)", flush=True)

    results = {}
    estimators = args.estimators.split(",")
    if args.concurrent:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(estimators)) as pool:
            futures = {est: pool.submit(run, est, assets, root / est, args.steps, []) for est in estimators}
            finished = {est: f.result() for est, f in futures.items()}
    else:
        finished = {est: run(est, assets, root / est, args.steps, []) for est in estimators}
    for est, (records, wall) in finished.items():
        steady = records[1:] if len(records) > 1 else records
        results[est] = {"records": steady, "wall": wall}
        print(f"{est}: {len(records)} steps, run wall {wall:.0f} s, median step "
              f"{med(steady, 'timing_s/step'):.2f} s (steps 2..{len(records)})", flush=True)

    out = {"policy_params": policy_params, "prm_params": prm_params}
    if "grpo" in results and "prpo" in results:
        g, q = results["grpo"]["records"], results["prpo"]["records"]
        out["grpo_step_s"], out["prpo_step_s"] = med(g, "timing_s/step"), med(q, "timing_s/step")
        out["ratio"] = out["prpo_step_s"] / out["grpo_step_s"]
        out["prm_s"] = med(q, "timing_s/prm")
        keys = sorted({k for r in g + q for k in r if k.startswith("timing_s/")})
        print(f"\nmedian stage times (s), steps 2..{args.steps}:")
        print(f"  {'stage':34s} {'grpo':>8s} {'prpo':>8s}")
        for k in keys:
            print(f"  {k:34s} {med(g, k):8.3f} {med(q, k):8.3f}")
        print(f"\nstep time PRPO / GRPO = {out['prpo_step_s']:.2f} / {out['grpo_step_s']:.2f} s = {out['ratio']:.3f} "
              f"(PRM stage {out['prm_s']:.3f} s = {100 * out['prm_s'] / out['prpo_step_s']:.1f} % of the PRPO step)")
        print(f"  PRM tokens per response token {med(q, 'prm/tokens_per_response_token'):.2f}")

    from omegaconf import OmegaConf

    from verl_prpo.conf import CONFIG_DIR

    cpu_cfg = OmegaConf.load(Path(CONFIG_DIR) / "prpo_trainer_cpu.yaml")
    base_cfg = OmegaConf.load(Path(CONFIG_DIR) / "prpo_base.yaml")
    batch = int(cpu_cfg.data.train_batch_size) * int(cpu_cfg.actor_rollout_ref.rollout.n)
    resp_len = int(cpu_cfg.data.max_response_length)
    k, m = int(base_cfg.algorithm.prpo.k), int(base_cfg.algorithm.prpo.m)
    k = max(0, min(k + 1, resp_len // m) - 1)  # cuts at least m tokens apart: what entropy segmentation can give
    parts = replay_prm_stage(assets, batch, resp_len, k)
    print(f"\nPRM stage replayed in process ({batch} responses x {resp_len} tokens, {k + 1} segments, "
          f"{parts['prm_tokens']} PRM tokens; best of 5):")
    worker = parts["decode"] + parts["retokenise"] + parts["forward"] + parts["offload"]
    for name in ("decode", "retokenise", "forward", "offload"):
        print(f"  {name:28s} {parts[name] * 1e3:8.1f} ms")
    print(f"  {'(offload if CUDA: 2 copies)':28s} {parts['offload_if_cuda_state_dict_copy_x2'] * 1e3:8.1f} ms")
    if "prm_s" in out:
        transfer = max(out["prm_s"] - worker, 0.0)
        print(f"  {'transfer and dispatch':28s} {transfer * 1e3:8.1f} ms  (timing_s/prm - the above)")
        out["transfer_s"] = transfer
    out.update({f"{k}_s": v for k, v in parts.items() if k != "prm_tokens"})
    print("\n" + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
