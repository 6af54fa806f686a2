"""PRM backends on CPU: ``prm.backend=fsdp`` (Hugging Face forwards) against ``prm.backend=vllm`` (vLLM pooling).

Three measurements (issue 19, item 4), each printed and written as JSON to ``--out``:

``throughput``
    The same batch through both backends in this process, via the trainer's scoring function ``score_batch``
    (policy tokens -> step texts -> PRM input ids -> forwards -> per-token scores): median seconds over
    ``--repeats`` after one warm-up round, the two backends alternating pass by pass (the load of a shared machine
    varies; both see the same), response tokens per second (policy tokens scored per second) and PRM tokens per
    second, the largest difference between the two backends' per-token scores. The fsdp backend is the
    ``PRMAdapter`` that each ``PRMWorker`` rank runs (``forward_mode=auto``: right-padded batches within
    ``prm.max_tokens_per_batch``); the vLLM backend is vLLM's offline engine (the engine the server replicas run,
    without the HTTP hop). The PRM is a random checkpoint of the Qwen2.5-Math-PRM layout (``--hidden``,
    ``--layers``, head size ``--head-dim``), the batch ``--responses`` responses of about ``--response-tokens``
    policy tokens in ``--segments`` segments.
``memory``
    Host memory the PRM costs per rank: fsdp = the resident-set growth of the process that loads it (the
    ``PRMWorker``); vLLM = the growth of the calling process plus the resident set of the engine's processes
    (engine core and worker; on CPU the KV cache, ``VLLM_CPU_KVCACHE_SPACE`` GiB, is reserved up front and counted).
``gpu_projection``
    Without a GPU: the tokens each backend computes for Qwen2.5-Math-PRM-7B on ``gpu_check.py``'s paper-sized batch
    (the fsdp plan's padding against vLLM's none) and the weight memory per rank (``run_gpu_projection``).
``step``
    The PRM stage inside a CPU-mode training step: the quickstart's tiny ``prpo`` run (verl's trainer, vLLM rollout)
    with ``prm.backend=fsdp`` and with ``prm.backend=vllm``, ``--step-runs`` steps each; the median
    ``timing_s/prm`` and ``timing_s/step`` of steps 2.. (step 1 is a warm-up), and the peak resident memory of the
    PRM's processes in the trainer (``PRMProcessSampler``: the ``PRMWorker`` rank, or the vLLM server actor with its
    engine processes), the per-rank host memory as the trainer actually holds it.

Usage: ``python benchmarks/bench_prm_vllm.py [--only throughput,memory,step] [--out DIR]`` (minutes of CPU; run
nothing else heavy meanwhile). Numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORDS = ("we add the numbers then multiply by two so the answer is first compute check result carry ten "
         "digit sum product next step since therefore").split()


def _rss(pid: int | None = None) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def _tree_rss(pid: int) -> dict[str, int]:
    """Resident set (and unique set where readable) of ``pid``'s child processes."""
    import psutil

    rss = uss = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            info = child.memory_full_info()
            rss += info.rss
            uss += getattr(info, "uss", 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss": rss, "uss": uss}


def build_batch(tok, *, responses: int, response_tokens: int, segments: int, seed: int):
    """``responses`` policy responses of ~``response_tokens`` tokens (ragged: 50-100 %), cut into ``segments``
    contiguous segments; returns (responses, mask, segment_ids, questions)."""
    rng = random.Random(seed)
    L = response_tokens
    resp = torch.full((responses, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((responses, L), dtype=torch.long)
    seg = torch.full((responses, L), -1, dtype=torch.long)
    questions = []
    for i in range(responses):
        n_target = rng.randint(L // 2, L)
        text = " ".join(rng.choice(WORDS) for _ in range(n_target))
        ids = tok(text, add_special_tokens=False)["input_ids"][:n_target]
        n = len(ids)
        resp[i, :n] = torch.tensor(ids)
        mask[i, :n] = 1
        seg[i, :n] = torch.arange(n) * segments // n
        questions.append("What is " + " ".join(rng.choice(WORDS) for _ in range(24)) + "?")
    return resp, mask, seg, questions


def run_throughput_and_memory(args, out_dir: Path) -> dict:
    import psutil
    from transformers import AutoTokenizer

    from verl_prpo.prm import PRMConfig, load_prm
    from verl_prpo.prm.scoring import score_batch
    from examples.credit_assignment.tiny_checkpoints import build_qwen_prm_checkpoint

    ckpt = build_qwen_prm_checkpoint(out_dir / "prm", corpus=[" ".join(WORDS)], hidden_size=args.hidden,
                                     num_layers=args.layers, head_dim=args.head_dim, seed=0)
    path = str(ckpt["path"])
    params = sum(p.numel() for m in ("body", "score0", "score2") for p in ckpt[m].parameters())
    del ckpt
    tok = AutoTokenizer.from_pretrained(path)
    batch = build_batch(tok, responses=args.responses, response_tokens=args.response_tokens,
                        segments=args.segments, seed=0)
    response_tokens = int(batch[1].sum())
    common = {"enable": True, "model_path": path, "max_length": args.max_length,
              "max_tokens_per_batch": args.max_tokens_per_batch}
    res: dict = {"prm_params": params, "responses": args.responses, "response_tokens": response_tokens,
                 "shape": {"hidden": args.hidden, "layers": args.layers, "head_dim": args.head_dim},
                 "torch_threads": torch.get_num_threads()}

    rss0 = _rss()
    hf = load_prm(PRMConfig.from_config({**common, "backend": "fsdp"}), "cpu")
    res["fsdp_memory"] = {"process_rss_growth": _rss() - rss0}
    rss1 = _rss()
    t = time.perf_counter()
    vl = load_prm(PRMConfig.from_config({**common, "backend": "vllm"}), "cpu")
    res["vllm_start_s"] = time.perf_counter() - t
    engine = _tree_rss(os.getpid())
    res["vllm_memory"] = {"process_rss_growth": _rss() - rss1, "engine_processes_rss": engine["rss"],
                          "engine_processes_uss": engine["uss"],
                          "kv_cache_gib": float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "0") or 0)}
    # the repeats alternate between the backends, so that both see the same (shared, varying) machine load; the
    # idle vLLM engine's CPU time during the fsdp passes is recorded (a spinning engine would slow fsdp down)
    engine_procs = psutil.Process().children(recursive=True)

    def engine_cpu_s() -> float:
        total = 0.0
        for proc in engine_procs:
            try:
                c = proc.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
        return total

    runs = {"fsdp": (hf, []), "vllm": (vl, [])}
    outputs = {}
    idle_cpu = 0.0
    for r in range(args.repeats + 1):  # the first round is a warm-up
        for name, (adapter, times) in runs.items():
            c0 = engine_cpu_s()
            t = time.perf_counter()
            outputs[name] = score_batch(adapter, tok, *batch, prior_mean=0.5)
            if r:
                times.append(time.perf_counter() - t)
                if name == "fsdp":
                    idle_cpu += engine_cpu_s() - c0
    for name, (_, times) in runs.items():
        med = statistics.median(times)
        st = outputs[name][1]
        res[name] = {"median_s": med, "min_s": min(times), "times_s": times,
                     "response_tokens_per_s": response_tokens / med, "prm_tokens_per_s": st["prm_tokens"] / med,
                     "prm_tokens": st["prm_tokens"], "padded_tokens": st["padded_tokens"],
                     "model_calls": st["model_calls"], "forward_mode": st.get("forward_mode")}
    res["vllm_engine_cpu_s_during_fsdp"] = idle_cpu
    want, got = outputs["fsdp"][0], outputs["vllm"][0]
    res["speedup_min"] = res["fsdp"]["min_s"] / res["vllm"]["min_s"]
    # streaming (issue 19, item 5): each response scored alone as it would be when it finishes generating
    k = min(args.streaming_responses, args.responses)
    one = [tuple(t[i: i + 1] for t in batch[:3]) + (batch[3][i: i + 1],) for i in range(k)]
    t = time.perf_counter()
    for b in one:
        score_batch(vl, tok, *b, prior_mean=0.5)
    alone = (time.perf_counter() - t) / k
    res["vllm_streaming"] = {"responses": k, "seconds_per_response_alone": alone,
                             "seconds_per_response_in_batch": res["vllm"]["median_s"] / args.responses}
    res["max_abs_diff"] = float((got - want).abs().max())
    res["speedup_vllm_over_fsdp"] = res["fsdp"]["median_s"] / res["vllm"]["median_s"]
    vl.close()
    res["host"] = {"cpus": psutil.cpu_count(), "ram_gib": psutil.virtual_memory().total / 2**30}
    return res


def _median_metric(records: list[dict], key: str) -> float | None:
    vals = [r["data"][key] for r in records if key in r["data"] and r["step"] > 1]
    return statistics.median(vals) if vals else None


class PRMProcessSampler:
    """Peak resident memory of the PRM's processes in a running trainer, sampled every ``period_s``: the fsdp
    backend's ``PRMWorker`` rank, or the vLLM backend's server actor (``CPUPRMvLLMHttpServer``) with its engine
    core and worker processes."""

    def __init__(self, period_s: float = 1.0) -> None:
        import threading

        self.period_s = period_s
        self.peak = {"rss": 0, "uss": 0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _roots():
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info.get("cmdline") or [])
            if ("PRMWorker" in cmd and "PRMWorkerExtension" not in cmd) or "PRMvLLMHttpServer" in cmd:
                yield proc

    def sample(self) -> dict:
        import psutil

        seen, rss, uss = set(), 0, 0
        for root in self._roots():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                uss += getattr(info, "uss", 0)
        return {"rss": rss, "uss": uss, "processes": len(seen)}

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            now = self.sample()
            if now["rss"] > self.peak["rss"]:
                self.peak = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_step(args, out_dir: Path) -> dict:
    from examples.credit_assignment.tiny_assets import build_tiny_assets
    from examples.credit_assignment.quickstart import build_command

    assets = build_tiny_assets(out_dir / "tiny", n_train=64, n_val=8)
    res = {}
    for backend in ("fsdp", "vllm"):
        run = out_dir / f"step_{backend}"
        run.mkdir(parents=True, exist_ok=True)
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            metrics.unlink()
        cmd, env = build_command("prpo", assets_dir=assets.root, steps=args.step_runs, out_dir=run,
                                 metrics_file=metrics, extra=[f"prm.backend={backend}"], python=sys.executable)
        t = time.perf_counter()
        with open(run / "log.txt", "w") as fh, PRMProcessSampler() as sampler:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=3600, cwd=run)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            res[backend] = {"error": f"rc={proc.returncode}, see {run / 'log.txt'}"}
            continue
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        res[backend] = {"steps": len(records), "wall_s": wall,
                        "timing_s/prm": _median_metric(records, "timing_s/prm"),
                        "timing_s/step": _median_metric(records, "timing_s/step"),
                        "prm_per_step_all": [r["data"].get("timing_s/prm") for r in records],
                        "prm/score_mean": _median_metric(records, "prm/score_mean"),
                        "prm_processes_peak": sampler.peak}
    return res


def run_gpu_projection(args) -> dict:
    """No GPU: what the two backends' GPU work and memory would be for Qwen2.5-Math-PRM-7B on the paper-sized batch
    of ``benchmarks/gpu_check.py`` (its ``make_inputs``: 1024 responses, ~200 question + ~1000 response tokens).

    * tokens computed per batch: the fsdp backend's right-padded plan (``PRMAdapter._plan`` within
      ``prm.max_tokens_per_batch``, ``forward_mode=auto`` = causal padded) against vLLM's unpadded continuous
      batching; the forward is FLOP-bound at that size, so the ratio bounds vLLM's compute saving;
    * memory per GPU rank from the parameter count (bf16): fsdp replicate keeps the weights on the GPU while
      scoring and a pinned host copy per rank (``param_offload``, the colocate default); vLLM keeps them on the GPU
      and, colocated, sleeps at level 1 (verl's colocated server), which backs the weights up in host memory too;
      on its own pool it never sleeps and holds no host copy.
    """
    import gpu_check
    from transformers import Qwen2Config

    from verl_prpo.prm.adapters import PRMAdapter
    from verl_prpo.prm.qwen_prm_model import Qwen2ForProcessRewardModel

    inputs = gpu_check.make_inputs(1024, 200, 1000, 6, gpu_check.QWEN25_MATH_PRM_7B["vocab_size"], 0)
    tok = types_tokenizer()
    planner = PRMAdapter(None, tok, step_separator="<extra_0>", max_length=4096,
                         max_tokens_per_batch=args.max_tokens_per_batch, forward_mode="causal")
    batches = planner._plan(inputs)
    real = sum(len(x.input_ids) for x in inputs)
    padded = sum(len(b) * max(len(inputs[i].input_ids) for i in b) for b in batches)
    with torch.device("meta"):
        model = Qwen2ForProcessRewardModel(Qwen2Config(**gpu_check.QWEN25_MATH_PRM_7B))
    params = sum(p.numel() for p in model.parameters())
    gib = params * 2 / 2**30
    return {"responses": len(inputs), "real_tokens": real, "fsdp_padded_tokens": padded,
            "fsdp_padded_over_real": padded / real, "fsdp_forwards": len(batches), "params": params,
            "weights_bf16_gib": gib,
            "memory_per_rank_gib": {
                "fsdp_colocate_offload": {"gpu_while_scoring": gib, "host_pinned": gib},
                "fsdp_own_pool": {"gpu": gib, "host": 0.0},
                "vllm_colocate_sleep_level1": {"gpu_awake": f"{gib:.1f} + KV cache (gpu_memory_utilization)",
                                               "host_while_asleep": gib},
                "vllm_own_pool": {"gpu": f"{gib:.1f} + KV cache (gpu_memory_utilization)", "host": 0.0}}}


def types_tokenizer():
    import types

    return types.SimpleNamespace(pad_token_id=0, eos_token_id=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="throughput,memory,step,gpu_projection",
                   help="comma list of throughput, memory, step, gpu_projection")
    p.add_argument("--out", default="/tmp/bench_prm_vllm")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--responses", type=int, default=64)
    p.add_argument("--response-tokens", type=int, default=256)
    p.add_argument("--segments", type=int, default=6)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-tokens-per-batch", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fsdp-threads", type=int, default=None,
                   help="torch threads of the fsdp backend (default torch's; CPU mode's Ray workers run with "
                        "OMP_NUM_THREADS=1, and vLLM's CPU worker computes on the cores VLLM_CPU_OMP_THREADS_BIND "
                        "gives it: all but one by default)")
    p.add_argument("--streaming-responses", type=int, default=16,
                   help="responses scored one at a time (the per-response latency of streaming scoring)")
    p.add_argument("--step-runs", type=int, default=5, help="training steps per backend in the step measurement")
    args = p.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.fsdp_threads:
        torch.set_num_threads(args.fsdp_threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join([sys.executable, *sys.argv]),
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
              "args": vars(args)}
    try:
        import vllm

        result["vllm"] = vllm.__version__
    except ImportError:
        result["vllm"] = None
    if only & {"throughput", "memory"}:
        result["throughput"] = run_throughput_and_memory(args, out_dir)
        t = result["throughput"]
        print(f"PRM {t['prm_params'] / 1e6:.1f} M params, {t['responses']} responses, {t['response_tokens']} response "
              f"tokens, torch threads {t['torch_threads']}")
        for b in ("fsdp", "vllm"):
            print(f"  {b:5s}: {t[b]['median_s']:.3f} s/batch  {t[b]['response_tokens_per_s']:.0f} response tok/s  "
                  f"{t[b]['prm_tokens_per_s']:.0f} PRM tok/s  (model calls {t[b]['model_calls']})")
        print(f"  vLLM / fsdp speed: {t['speedup_vllm_over_fsdp']:.2f}x by medians, {t['speedup_min']:.2f}x by fastest "
              f"passes; max |score diff| {t['max_abs_diff']:.2e}; vLLM start {t['vllm_start_s']:.0f} s; idle vLLM "
              f"engine CPU during the fsdp passes {t['vllm_engine_cpu_s_during_fsdp']:.1f} s")
        sr = t["vllm_streaming"]
        print(f"  vLLM one response at a time: {sr['seconds_per_response_alone'] * 1e3:.0f} ms each, in the batch "
              f"{sr['seconds_per_response_in_batch'] * 1e3:.0f} ms each")
        m = t["fsdp_memory"], t["vllm_memory"]
        print(f"  host memory per rank: fsdp {m[0]['process_rss_growth'] / 2**20:.0f} MiB (process growth); vLLM "
              f"{m[1]['process_rss_growth'] / 2**20:.0f} MiB caller + {m[1]['engine_processes_rss'] / 2**20:.0f} MiB "
              f"engine processes RSS ({m[1]['engine_processes_uss'] / 2**20:.0f} MiB unique; KV cache "
              f"{m[1]['kv_cache_gib']:g} GiB reserved)")
    if "gpu_projection" in only:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        result["gpu_projection"] = g = run_gpu_projection(args)
        print(f"GPU projection (Qwen2.5-Math-PRM-7B, {g['responses']} responses, {g['real_tokens']} PRM tokens): fsdp "
              f"computes {g['fsdp_padded_over_real']:.3f}x the real tokens (right padding, {g['fsdp_forwards']} "
              f"forwards), vLLM 1.000x; weights {g['weights_bf16_gib']:.1f} GiB in bf16")
    if "step" in only:
        result["step"] = run_step(args, out_dir)
        for b, r in result["step"].items():
            print(f"  step ({b}): {r}")
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    print("BENCH_PRM_VLLM=" + json.dumps(result))


if __name__ == "__main__":
    main()
