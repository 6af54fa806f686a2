"""Time the process-reward estimators against verl's own GRPO on one CPU batch.

Batch: 1024 responses x 4096 tokens, groups of 8 (uids shuffled over the batch), random lengths in [1, 4096].
Each row of the table is the median wall time over ``--repeats`` interleaved rounds (after one warm-up) and its
ratio to ``grpo`` (``core_algos.compute_grpo_outcome_advantage``). ``prpo`` includes the entropy segmentation and the
broadcast of per-segment PRM scores to tokens (the stand-in for the PRM's map back to tokens); ``prl`` includes its
fixed segmentation; ``prm_avg``, ``spro`` and ``pure`` are the estimators alone (``pure`` reads the entropy segments
as its steps). Every plugin estimator is called with a ``metrics`` dict, as ``prpo_sync`` calls it in a training step
(``--no-metrics``: the advantages alone); verl's ``grpo`` computes no metrics of its own. ``prpo_floor`` is the
``prpo`` row's stage (same segmentation, broadcast and advantages) without the input checks and the metrics: what the
checks and metrics cost, not an estimator. The figures are for reading, not a gate. The last column counts the minor page faults of a timed call (``getrusage``): 4096 per 16 MiB buffer that
the kernel has to map again.

On CPU the figures depend on the allocator as much as on the code. With glibc's defaults, freeing more than 32 MiB at
the top of the heap returns it to the kernel, so a call whose (B, L) buffers (16 MiB each in float32) exceed that
pays a page fault for every 4 KiB of them again on the next call (about 7 ms per 16 MiB on the VM this was written
on, against ~1.5 ms for the arithmetic of one elementwise op); grpo allocates one buffer and pays none.
``MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=33554432`` (glibc's environment variables; jemalloc or
tcmalloc through ``LD_PRELOAD`` do the same) keeps the heap mapped, and the figures then measure the arithmetic.
The header names the allocator settings in effect (``THP_MEM_ALLOC_ENABLE=1``, PyTorch's huge pages, changes the
first-touch cost too). On a machine shared with other jobs, use
``--threads 1``: with more threads than free cores every parallel kernel waits for its slowest thread; add
``--cpu-time`` when other jobs hold the cores (wall time then mostly measures the wait for a core).

    python benchmarks/bench_advantages.py [--batch 1024] [--length 4096] [--group 8] [--repeats 7] [--threads N]
                                          [--no-metrics] [--cpu-time]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch
from verl.trainer.ppo import core_algos

from verl_prpo import estimators as E
from verl_prpo.segmentation import broadcast_segment_scores, segment


_ALLOCATOR_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES",
                  "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")


def make_batch(batch: int, length: int, group: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    rewards = torch.zeros(batch, length)
    rewards[torch.arange(batch), lengths - 1] = torch.randint(0, 2, (batch,), generator=gen).float()
    uids = np.array([f"q{i // group}" for i in range(batch)], dtype=object)
    uids = uids[np.random.default_rng(seed).permutation(batch)]  # groups scattered, as after balance_batch
    return {
        "token_level_rewards": rewards,
        "response_mask": mask,
        "index": uids,
        "entropy": torch.rand(batch, length, generator=gen) * 3,
        "old_log_probs": -torch.rand(batch, length, generator=gen) * 2,
        "ref_log_prob": -torch.rand(batch, length, generator=gen) * 2,
        "segment_scores": torch.rand(batch, 6, generator=gen),  # k + 1 = 6 segments at most
    }


def _metrics(b: dict) -> dict | None:
    return {} if b["with_metrics"] else None  # prpo_sync always passes a dict


def run_prpo(b: dict) -> torch.Tensor:
    seg = segment("entropy", b["response_mask"], entropy=b["entropy"], k=5, m=10)
    prm = broadcast_segment_scores(b["segment_scores"], seg.segment_ids)
    adv, _ = E.compute_prpo_advantage(
        b["token_level_rewards"], b["response_mask"], b["index"], None, prm_scores=prm, segment_ids=seg.segment_ids,
        metrics=_metrics(b),
    )
    return adv


def run_prpo_floor(b: dict) -> torch.Tensor:
    """``run_prpo`` without input checks and metrics (k=5, m=10 and ``PRPOConfig``'s defaults, as there): the
    segmentation, the broadcast and A = ((p - mu) / sigma + beta) m, from the package's public pieces."""
    from verl_prpo.config import PRPOConfig
    from verl_prpo.ops import group_ids, group_normalized

    valid = b["response_mask"].bool()
    seg = segment("entropy", valid, entropy=b["entropy"], k=5, m=10)
    p = broadcast_segment_scores(b["segment_scores"], seg.segment_ids)
    _, beta = group_normalized(b["token_level_rewards"].sum(-1), *group_ids(b["index"]))
    cfg = PRPOConfig()
    return ((p - cfg.mu) / cfg.sigma + beta[:, None]) * valid


def run_prm_avg(b: dict) -> torch.Tensor:
    # the estimator alone: per-token PRM scores as the trainer hands them over (built once, outside the timing)
    return E.compute_prm_avg_advantage(
        b["token_level_rewards"], b["response_mask"], b["index"], None, prm_scores=b["prm_scores"], metrics=_metrics(b)
    )[0]


def run_prl(b: dict) -> torch.Tensor:
    return E.compute_prl_advantage(
        b["token_level_rewards"], b["response_mask"], b["index"], None,
        old_log_probs=b["old_log_probs"], ref_log_prob=b["ref_log_prob"], metrics=_metrics(b),
    )[0]


def run_spro(b: dict) -> torch.Tensor:
    return E.compute_spro_advantage(
        b["token_level_rewards"], b["response_mask"], b["index"], None,
        old_log_probs=b["old_log_probs"], ref_log_prob=b["ref_log_prob"], metrics=_metrics(b),
    )[0]


def run_pure(b: dict) -> torch.Tensor:
    return E.compute_pure_advantage(
        b["token_level_rewards"], b["response_mask"], b["index"], None,
        prm_scores=b["prm_scores"], segment_ids=b["segment_ids"], metrics=_metrics(b),
    )[0]


def run_grpo(b: dict) -> torch.Tensor:
    return core_algos.compute_grpo_outcome_advantage(b["token_level_rewards"], b["response_mask"], b["index"])[0]


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(runs: dict, b: dict, repeats: int, clock=time.perf_counter, faults: dict | None = None
            ) -> dict[str, list[float]]:
    """Times in ms (``clock``: wall, or this thread's CPU time); ``faults`` (if given) receives each timed call's
    minor page faults per estimator. Rounds interleave every estimator (grpo first in
    each round) so that a change of machine load hits all of them alike; one warm-up round is discarded.

    Each timed call follows an untimed call of the same function: glibc returns freed memory at the top of the heap
    to the kernel, so a call pays page faults for whatever its predecessor released. Timed right after the previous
    estimator, grpo (which allocates one (B, L) buffer) measured 15-29 ms depending on who ran before it; after a
    call of itself, every estimator pays for its own buffers only."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats + 1):
        for name, fn in runs.items():
            fn(b)  # settles the heap to this function's own pattern
            f0, t0 = _minor_faults(), clock()
            fn(b)
            if r:
                times[name].append((clock() - t0) * 1e3)
                if faults is not None:
                    faults.setdefault(name, []).append(_minor_faults() - f0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-metrics", action="store_true", help="call the estimators without a metrics dict")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time this thread's CPU seconds instead of wall time (with --threads 1: for a loaded machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b = make_batch(args.batch, args.length, args.group)
    b["with_metrics"] = not args.no_metrics
    seg = segment("entropy", b["response_mask"], entropy=b["entropy"], k=5, m=10)
    b["prm_scores"] = broadcast_segment_scores(b["segment_scores"], seg.segment_ids)
    b["segment_ids"] = seg.segment_ids
    runs = {"grpo": run_grpo, "prpo": run_prpo, "prm_avg": run_prm_avg, "prl": run_prl, "spro": run_spro,
            "pure": run_pure}
    try:  # an older verl_prpo (compare_advantages.py) may lack the pieces the floor uses
        from verl_prpo.ops import group_normalized  # noqa: F401
        runs["prpo_floor"] = run_prpo_floor
    except ImportError:
        pass
    faults: dict[str, list[int]] = {}
    times = measure(runs, b, args.repeats, time.thread_time if args.cpu_time else time.perf_counter, faults)
    allocator = " ".join(f"{k}={os.environ[k]}" for k in _ALLOCATOR_ENV if k in os.environ) or "glibc defaults"
    print(f"batch {args.batch} x {args.length}, group {args.group}, CPU, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved rounds, {'thread CPU' if args.cpu_time else 'wall'} time, "
          f"metrics {'off' if args.no_metrics else 'on'}, "
          f"allocator: {allocator}\n")
    print("| estimator | median ms | ratio of medians to grpo | median of per-round ratios | page faults / call |")
    print("|---|---:|---:|---:|---:|")
    g = times["grpo"]
    for name, ts in times.items():
        per_round = statistics.median(t / gr for t, gr in zip(ts, g))
        print(f"| {name} | {statistics.median(ts):.1f} | {statistics.median(ts) / statistics.median(g):.2f} | "
              f"{per_round:.2f} | {statistics.median(faults[name]):.0f} |")


if __name__ == "__main__":
    main()
