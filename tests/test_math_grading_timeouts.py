"""Grading always returns: runaway answers (exponent towers, huge factorials, binomials and powers) cannot freeze
the caller, are stopped within the timeout, count as wrong, and leave the normal answers of the same batch graded
right (verl_prpo.math_grading.GradingPool).

Two pools are exercised: the default one, where math-verify's own signal timeouts usually end a runaway inside the
worker, and a *signal-proof* one whose workers cannot receive SIGALRM (blocked in the thread that starts them: a
signal mask survives fork and exec). There math-verify's timeouts never fire, as for C code that never returns to
the interpreter, so only the pool's kill can stop the computation.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import verl_prpo.math_grading as mg
from verl_prpo.math_grading import GradeResult, GradingPool, grade

#: the issue's example and its family; each would run for minutes (or forever) without a bound
RUNAWAYS = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{(10^{9})!}",
    "\\boxed{1000000000!}",
    "\\boxed{\\binom{10^{12}}{10^{11}}}",
    "\\boxed{\\dbinom{2^{100}}{2^{99}}}",
    "\\boxed{99999999999^{99999999999}}",
    "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "\\boxed{\\frac{10^{10^{9}}}{3}}",
]

#: (response, ground truth, correct): answers that need math-verify (no string match) or the string path
NORMAL = [
    ("so \\boxed{\\frac{1}{2}}", "0.5", True),
    ("so \\boxed{0.6}", "0.5", False),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
    ("\\boxed{42}", "42", True),
    ("\\boxed{41}", "42", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{[1, 5)}", "[1,5)", True),
    ("\\boxed{10^{3}}", "1000", True),
    ("\\boxed{5!}", "120", True),
    ("\\boxed{\\binom{5}{2}}", "10", True),
]


class SignalProofPool(GradingPool):
    """A pool whose workers never receive SIGALRM (math-verify's own timeouts cannot fire there): the zygote is
    launched from a thread that blocks it, and a blocked signal stays blocked through fork and exec, so every
    worker forked from the zygote has it blocked too."""

    def _start_worker(self) -> None:  # runs in a fresh thread of its own
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        super()._start_worker()


def _signal_proof_pool(workers: int) -> GradingPool:
    pool = SignalProofPool(workers).start()
    deadline = time.monotonic() + 120
    while len(pool._idle) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool._idle) == workers
    return pool


@pytest.fixture
def signal_proof_pool(monkeypatch):
    pool = _signal_proof_pool(2)
    monkeypatch.setattr(mg, "_POOL", pool)
    yield pool
    pool.close()


class _Ticker:
    """A thread that notes the time every 50 ms: a long gap means the interpreter lock was held (a frozen process)."""

    def __init__(self):
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.times.append(time.monotonic())
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def max_gap(self) -> float:
        return max((b - a for a, b in zip(self.times, self.times[1:])), default=0.0)


def _grade_concurrently(items, *, timeout: float, threads: int = 6):
    """Grade ``items`` [(response, gold)] from ``threads`` non-main threads; returns (results in order, seconds)."""
    results: list[GradeResult | None] = [None] * len(items)
    next_index = iter(range(len(items)))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            results[i] = grade(items[i][0], items[i][1], timeout=timeout)

    t0 = time.monotonic()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(600)
    return results, time.monotonic() - t0


def _check_batch(results, n_runaway):
    for (response, gold, correct), res in zip(NORMAL, results[n_runaway:]):
        assert res is not None and res.answer_found, response
        assert res.correct == correct, (response, gold, res)
        assert not res.timed_out, response
    for response, res in zip(RUNAWAYS, results[:n_runaway]):
        assert res is not None and res.answer_found and not res.correct, (response, res)


def test_the_issue_example_from_another_thread_returns_in_time():
    """The issue: grade(r"\\boxed{9^{9^{9^{9}}}}", "1") from a non-main thread did not return after 60 s and froze
    every other thread. Now it returns within the timeout and the process keeps running."""
    timeout = 4.0
    mg.get_grading_pool().start()
    out = {}

    def work():
        t0 = time.monotonic()
        out["result"] = grade("\\boxed{9^{9^{9^{9}}}}", "1", timeout=timeout)
        out["seconds"] = time.monotonic() - t0

    with _Ticker() as ticker:
        t = threading.Thread(target=work)
        t.start()
        t.join(timeout + 30)
    assert not t.is_alive()
    assert out["result"].answer_found and not out["result"].correct
    assert out["seconds"] < timeout + 2.0
    assert ticker.max_gap < 1.0  # the caller's process was never frozen


def test_runaway_family_in_a_batch_with_normal_answers():
    """Default pool, graded concurrently off the main thread: every runaway ends (by math-verify's timeout in the
    worker, or by a kill), every normal answer is graded right, the batch ends within a bound. math-verify's own
    timeout inside the worker is a quarter of this one: at 4 s (1 s each), a load average of 20 on 2 cores once made
    (x+1)^2 == x^2+2x+1 time out and score wrong, so the batch runs at 8 s."""
    timeout = 8.0
    pool = mg.get_grading_pool().start()
    items = [(r, "1") for r in RUNAWAYS] + [(r, g) for r, g, _ in NORMAL]
    with _Ticker() as ticker:
        results, seconds = _grade_concurrently(items, timeout=timeout)
    _check_batch(results, len(RUNAWAYS))
    # each runaway holds one of the pool's workers for at most `timeout` (plus a restart); generous bound
    assert seconds < (len(RUNAWAYS) / pool.workers + 2) * (timeout + 3.0)
    assert ticker.max_gap < 1.0


def test_kill_stops_what_math_verify_cannot(signal_proof_pool):
    """Workers deaf to SIGALRM: the runaways run until the pool kills them at the timeout; each counts as a
    timeout, the workers are replaced, and the normal answers of the batch are still graded right."""
    timeout = 2.0
    pool = signal_proof_pool
    timeouts0, restarts0 = pool.timeouts, pool.restarts
    items = [(r, "1") for r in RUNAWAYS[:4]] + [(r, g) for r, g, _ in NORMAL]
    with _Ticker() as ticker:
        results, seconds = _grade_concurrently(items, timeout=timeout)
    _check_batch(results, 4)
    assert all(res.timed_out for res in results[:4])
    assert pool.timeouts - timeouts0 == 4 and pool.restarts - restarts0 == 4
    # 4 runaways on 2 workers: 2 rounds of `timeout`, plus restarts (a fresh interpreter each) and normal answers
    assert seconds < 4 * (timeout + 3.0)
    assert ticker.max_gap < 1.0
    # the pool is whole again and grades as before
    deadline = time.monotonic() + 60
    while pool.alive < pool.workers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.alive == pool.workers
    assert grade("\\boxed{\\frac{2}{4}}", "0.5", timeout=timeout) == GradeResult(True, True, "\\frac{2}{4}")


def test_single_caller_returns_within_timeout(signal_proof_pool):
    """One answer at a time: every call returns within its timeout (plus scheduling slack), whatever the input."""
    timeout = 1.5
    for response in RUNAWAYS[:3] + ["\\boxed{\\frac{1}{2}}"]:
        t0 = time.monotonic()
        res = grade(response, "0.5", timeout=timeout)
        assert time.monotonic() - t0 < timeout + 1.0, response
        assert res.correct == (response == "\\boxed{\\frac{1}{2}}")


def test_several_golds_share_one_timeout(signal_proof_pool):
    timeout = 1.5
    t0 = time.monotonic()
    res = grade("\\boxed{9^{9^{9^{9}}}}", ["1", "2", "3", "4"], timeout=timeout)
    assert res.timed_out and not res.correct
    # one timeout for all four golds: well under 4 x 1.5 s, with slack for a loaded 2-core machine
    assert time.monotonic() - t0 < timeout + 2.5


def test_a_worker_dead_while_idle_is_replaced_not_used():
    pool = GradingPool(1).start()
    try:
        victim = pool._idle[0]
        os.kill(victim.pid, signal.SIGKILL)  # a worker of this test's own pool
        deadline = time.monotonic() + 10
        while not victim.dead() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert victim.dead()
        mg_pool, mg._POOL = mg._POOL, pool
        try:
            res = grade("\\boxed{\\frac{1}{2}}", "0.5", timeout=10)
        finally:
            mg._POOL = mg_pool
        assert res == GradeResult(True, True, "\\frac{1}{2}")
        assert pool.restarts == 1 and pool.timeouts == 0
    finally:
        pool.close()


def test_string_fast_path_needs_no_worker(monkeypatch):
    """Answers decided by the normalised strings never reach a worker (the cheap path stays in the caller)."""
    def no_pool():
        raise AssertionError("a worker was asked")

    monkeypatch.setattr(mg, "get_grading_pool", no_pool)
    assert grade("so \\boxed{42}.", "42").correct
    assert grade("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}").correct
    assert not grade("no box", "42").answer_found


def test_forked_child_gets_its_own_pool():
    parent = mg.get_grading_pool().start()
    pid = os.fork()
    if pid == 0:  # child: must not share the parent's workers
        code = 0
        try:
            code = 1 if mg._POOL is not None else 0
            code = code or (2 if mg.get_grading_pool() is parent else 0)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert parent.alive == parent.workers


def test_invalid_settings():
    with pytest.raises(ValueError, match="workers"):
        GradingPool(0)
    with pytest.raises(ValueError, match="memory_limit_mb"):
        GradingPool(1, memory_limit_mb=10)
    with pytest.raises(ValueError, match="timeout"):
        mg.get_grading_pool().equivalent("1", ["2"], timeout=0)


@pytest.mark.ray
def test_inside_an_async_ray_actor_like_verls_reward_loop():
    """verl's reward-loop worker is an async Ray actor that grades in executor threads: there too a runaway answer
    returns within the timeout and the actor's event loop keeps serving other calls meanwhile."""
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        @ray.remote(num_cpus=1)
        class Grader:
            async def grade(self, response: str, gold: str, timeout: float):
                import asyncio
                import functools
                import time as _time

                from verl_prpo.math_grading import grade

                t0 = _time.monotonic()
                res = await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(grade, response, gold, timeout=timeout))
                return res.correct, res.answer_found, _time.monotonic() - t0

            async def ping(self):
                return "pong"

        actor = Grader.remote()
        ray.get(actor.ping.remote(), timeout=120)
        ray.get(actor.grade.remote("\\boxed{1}", "1", 5.0), timeout=120)  # the pool is warm
        runaway = actor.grade.remote("\\boxed{9^{9^{9^{9}}}}", "1", 3.0)
        normal = actor.grade.remote("\\boxed{\\frac{1}{2}}", "0.5", 3.0)
        assert ray.get(actor.ping.remote(), timeout=10) == "pong"  # the actor is not frozen
        correct, found, seconds = ray.get(runaway, timeout=60)
        assert found and not correct and seconds < 3.0 + 2.0
        assert ray.get(normal, timeout=60)[0]
    finally:
        if started:
            ray.shutdown()
