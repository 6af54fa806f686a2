"""Answer extraction and equivalence checking for math reasoning (outcome reward and evaluation).

* :func:`last_boxed` returns the content of the **last** ``\\boxed{...}`` / ``\\fbox{...}`` of a text (nested and
  escaped braces handled; the brace-less form ``\\boxed 5`` too).
* :func:`extract_gsm8k_answer` returns what follows ``####`` (GSM8K reference solutions), commas stripped.
* :func:`is_equivalent` decides whether a predicted answer equals a gold answer: a normalised string comparison
  first (cheap, exact), then `math-verify <https://github.com/huggingface/Math-Verify>`_ (sympy-based
  equivalence: ``0.5 == \\frac{1}{2}``, ``(3, \\frac{\\pi}{2})`` with spacing differences, sets, intervals, ...).
  If math-verify raises or times out, the string comparison's verdict stands.
* :func:`grade` combines them: the model's answer is the last box of its response.

Runaway inputs. A short answer can ask for a computation that never ends: ``9^{9^{9^{9}}}``, ``(10^{8})!``,
``\\binom{10^{9}}{5 \\cdot 10^{8}}``, ``2^{2^{40}}``. sympy evaluates such integers exactly in C code that holds the
interpreter lock, so nothing in the same process runs meanwhile (no other thread, no ``asyncio.wait_for``, and no
signal handler: math-verify's ``signal.alarm`` timeouts fire only between bytecodes, and only in the main thread).
Therefore math-verify never runs in the caller's process: it runs in a small pool of warm worker processes
(:class:`GradingPool`). On first use the pool starts a *zygote*, a fresh interpreter
(``python -m verl_prpo._grading_worker``) that imports and warms up math-verify once and then forks the workers, so
a worker is ready in milliseconds. The caller sends ``(predicted, golds)`` and waits on a socket, which releases
the lock; when ``timeout`` seconds pass without an answer the worker is killed (SIGKILL, by the zygote) and a fresh
one is forked, and the grading counts as wrong with ``GradeResult.timed_out=True`` (logged). Inside a worker
math-verify's own timeouts are on (a worker's main thread), so slow but interruptible sympy work usually ends
without a kill. Each worker's address space is limited (``memory_limit_mb``) so a runaway cannot take the host's
memory before it is killed, and its CPU time per request is limited so a worker left behind by a dead pool ends by
itself.

The cheap parts stay in the caller: box extraction and the normalised string comparison (linear in the text) decide
most gradings without a worker. ``grade`` returns within ``timeout`` seconds plus the time it waits for a free
worker: a caller that grades one answer at a time finds one idle (or waits the milliseconds of a fork), a caller
with many concurrent gradings (the reward manager) waits behind at most ``timeout`` per busy worker.
Safe from any thread and from asyncio executors; a process that forks gets its own pool.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "GradeResult",
    "GradingPool",
    "configure_grading",
    "extract_gsm8k_answer",
    "get_grading_pool",
    "grade",
    "is_equivalent",
    "last_boxed",
    "normalize_answer",
]

#: seconds a grading may take before its worker is killed and the answer counts as wrong
DEFAULT_TIMEOUT = 10.0

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _match_braces(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_pos``; escaped braces (``\\{``, ``\\}``) are literal."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...); command letters are harmless to skip
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_starts(text: str) -> list[tuple[int, int]]:
    """(start, end-of-command) of every ``\\boxed`` / ``\\fbox`` command in ``text``, in order."""
    out = []
    for cmd in _BOX_COMMANDS:
        start = text.find(cmd)
        while start != -1:
            end = start + len(cmd)
            # `\boxedfoo` is another command, not a box
            if end >= len(text) or not text[end].isalpha():
                out.append((start, end))
            start = text.find(cmd, end)
    out.sort()
    return out


def last_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or ``None``.

    * Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``), escaped braces are literal
      (``\\boxed{\\{1, 2\\}}`` -> ``\\{1, 2\\}``).
    * The brace-less form ``\\boxed 5`` yields the text up to the next ``$``, newline or end (``5``).
    * If the *last* box is never closed (a response truncated inside its final answer) the result is ``None``:
      an earlier box is not taken as the final answer.
    * An empty box gives ``""`` (callers treat it as "no answer").
    """
    if not text:
        return None
    starts = _box_starts(text)
    if not starts:
        return None
    _, end = starts[-1]
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _match_braces(text, i)
        if close is None:
            return None
        return text[i + 1 : close].strip()
    if i == end:
        # `\boxed` directly followed by something that is neither a brace nor a space (e.g. `\boxed$`)
        return None
    m = re.match(r"[^$\n]*", text[i:])
    content = m.group(0).strip() if m else ""
    return content or None


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The answer after the last ``####`` of a GSM8K solution, commas and a leading ``$`` removed; else ``None``."""
    if not text or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    tail = tail.split("\n", 1)[0].strip()
    tail = tail.replace(",", "").replace("$", "").strip()
    if tail.endswith("."):
        tail = tail[:-1].strip()
    return tail or None


# ---------------------------------------------------------------------------------------------------------------
# normalisation (string fast path, fallback and majority voting)
# ---------------------------------------------------------------------------------------------------------------

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def normalize_answer(ans: str | None) -> str | None:
    """A canonical string form of an answer used for exact comparison and for majority voting.

    Removes ``$``, spaces, ``\\left``/``\\right``, thin spaces (``\\!``, ``\\,``, ``\\;``), ``\\text{}``-style
    wrappers, degree marks, a trailing full stop, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, thousands separators
    in plain numbers (``14{,}400`` / ``14,400`` -> ``14400``) and leading zeros/trailing ``.0`` of integers
    (``025`` -> ``25``, ``27.0`` -> ``27``). Conservative: two strings that normalise equal are the same answer.
    """
    if ans is None:
        return None
    s = str(ans).strip()
    if not s:
        return ""
    s = s.replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "")
    for thin in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(thin, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for _ in range(3):  # nested \text{\textbf{...}}
        s2 = _TEXT_CMD.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "")
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    # thousands separators in plain numbers
    if re.fullmatch(r"-?\d{1,3}(?:(?:\{,\}|,)\d{3})+(?:\.\d+)?", s):
        s = s.replace("{,}", "").replace(",", "")
    # integers: leading zeros, trailing .0
    m = re.fullmatch(r"(-?)0*(\d+)(?:\.0+)?", s)
    if m:
        s = m.group(1) + m.group(2)
        if s == "-0":
            s = "0"
    return s


# ---------------------------------------------------------------------------------------------------------------
# math-verify: runs only inside the grading workers
# ---------------------------------------------------------------------------------------------------------------

_MV = None  # lazily imported (parse, verify, LatexExtractionConfig, ExprExtractionConfig, TimeoutException)
_WARMED = False


def _math_verify():
    global _MV
    if _MV is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from math_verify.errors import TimeoutException

        _MV = (parse, verify, LatexExtractionConfig, ExprExtractionConfig, TimeoutException)
    return _MV


def _wrap(ans: str) -> str:
    """Give math-verify a LaTeX anchor: a bare answer is wrapped in ``\\boxed{}`` (``$..$`` kept as is)."""
    a = ans.strip()
    if "\\boxed" in a or "\\fbox" in a:
        return a
    if a.startswith("$") and a.endswith("$") and len(a) > 1:
        return a
    return "\\boxed{" + a + "}"


def _math_verify_equal(pred: str, gold: str, timeout: int | None) -> bool:
    """math-verify's verdict on one pair; ``timeout``: its own signal-based limit per parse / verify (main thread
    only, None = off). Timeouts and exceptions are "not equal". What a grading worker runs."""
    parse, verify, LatexCfg, ExprCfg, TimeoutException = _math_verify()
    cfg = [LatexCfg(), ExprCfg()]
    try:
        gold_parsed = parse(_wrap(gold), extraction_config=cfg, parsing_timeout=timeout)
        pred_parsed = parse(_wrap(pred), extraction_config=cfg, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except TimeoutException:
        logger.debug("math-verify timed out on pred=%r gold=%r", pred[:200], gold[:200])
        return False
    except Exception as exc:  # noqa: BLE001 - math-verify/sympy can raise nearly anything (MemoryError included)
        logger.debug("math-verify raised %r on pred=%r gold=%r", exc, pred[:200], gold[:200])
        return False


def _warm_up() -> None:
    """Pay math-verify's first-call costs (imports, grammar and regex compilation: about 2 s) when a worker
    starts, before it reports ready, so that no grading's timeout pays them."""
    global _WARMED
    if _WARMED:
        return
    _math_verify()
    for pred, gold in (("\\frac{1}{2}", "0.5"), ("(1, \\infty)", "(1,\\infty)"), ("x^2+1", "1+x^2")):
        _math_verify_equal(pred, gold, 5)  # a worker's main thread: math-verify's own timeouts work
    _WARMED = True


def _limit_memory(limit_bytes: int | None) -> None:
    """Cap this process's address space, so a runaway integer fails with MemoryError instead of taking the host."""
    if not limit_bytes:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ImportError, ValueError, OSError) as exc:  # not on every platform
        logger.debug("grading worker: could not limit memory: %r", exc)


def _limit_cpu_of_next_job(seconds: float) -> None:
    """Let the kernel end this worker (SIGXCPU) if the next job uses more than ``seconds`` of CPU: the parent
    normally kills it much earlier, this only matters when the parent itself died mid-job."""
    try:
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used.ru_utime + used.ru_stime + seconds) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):
        pass


def _worker_main(conn, memory_limit_bytes: int | None) -> None:
    """A grading worker: reports ``(status, pid)``, then answers each ``(pred, golds, seconds)`` request with
    ``("ok", any pred == gold)`` until its connection closes or it receives ``None``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which kills the workers
    # math-verify logs every timeout it catches at WARNING level; the parent logs the gradings that matter
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _limit_memory(memory_limit_bytes)
    try:
        _warm_up()
        status = "ready"
    except ImportError:
        status = "no_math_verify"
    try:
        conn.send((status, os.getpid()))
    except OSError:  # the pool closed (its process exited) while this worker started
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        pred, golds, seconds = request
        # the parent kills a job after its timeout (about 4 x seconds); the kernel does if the parent is gone
        _limit_cpu_of_next_job(8 * seconds * len(golds) + 10)
        conn.send(("ok", any(_math_verify_equal(pred, g, seconds) for g in golds)))


# ---------------------------------------------------------------------------------------------------------------
# the worker pool
# ---------------------------------------------------------------------------------------------------------------


def _reap(live: set[int]) -> None:
    """Collect the zygote's children that ended by themselves (their ids leave ``live``)."""
    while live:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            live.clear()
            return
        if pid == 0:
            return
        live.discard(pid)


def _kill_and_reap(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)  # SIGKILL: a worker stuck in C code ignores anything gentler
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _zygote_main(conn) -> None:
    """The pool's zygote: warms math-verify up once, then forks one grading worker per ``("fork", limit)`` request
    (the worker's socket arrives as a passed file descriptor; the reply is ``("forked", pid)``), kills and reaps a
    worker on ``("kill", pid)``, and kills its workers and ends when the pool's connection closes.

    It is single-threaded, so forking it is safe, and a worker is ready in milliseconds. Only the zygote signals
    its workers, and only children it has not reaped yet, so a process id is never reused under it.
    """
    import signal
    from multiprocessing.connection import Connection
    from multiprocessing.reduction import recv_handle

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the pool's process, which closes the pool
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        _warm_up()
        status = "ready"
    except ImportError:
        status = "no_math_verify"
    live: set[int] = set()
    try:
        conn.send((status, os.getpid()))
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            _reap(live)
            if request[0] == "fork":
                fd = recv_handle(conn)
                pid = os.fork()
                if pid == 0:  # the worker: never returns into this loop
                    code = 0
                    try:
                        conn.close()
                        _worker_main(Connection(fd), request[1])
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
                os.close(fd)
                live.add(pid)
                conn.send(("forked", pid))
            elif request[0] == "kill":
                if request[1] in live:
                    _kill_and_reap(request[1])
                    live.discard(request[1])
                conn.send(("killed", request[1]))
    finally:
        for pid in list(live):
            _kill_and_reap(pid)


class _Zygote:
    """The pool's end of its zygote (``python -m verl_prpo._grading_worker FD``, a fresh interpreter).

    A fresh interpreter rather than ``multiprocessing``: nothing of the caller (CUDA, Ray, threads, locks held by
    other threads) is inherited, and the caller's main module is never re-imported (``spawn``/``forkserver``
    would re-run an unguarded script or a Ray worker's entry point in every worker).
    """

    def __init__(self, start_timeout: float):
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        # the workers import this very copy of verl_prpo, whatever the caller's sys.path was built from
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verl_prpo._grading_worker", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                close_fds=True)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.lock = threading.Lock()
        if not self.conn.poll(start_timeout):
            self.close()
            raise RuntimeError(f"the grading zygote did not report ready within {start_timeout:g} s")
        self.status, _ = self.conn.recv()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, memory_limit_bytes: int | None):
        """A new worker: ``(pid, connection)``; the worker then reports ``(status, pid)`` on the connection."""
        import socket
        from multiprocessing.connection import Connection
        from multiprocessing.reduction import send_handle

        parent_sock, child_sock = socket.socketpair()
        try:
            with self.lock:
                self.conn.send(("fork", memory_limit_bytes))
                send_handle(self.conn, child_sock.fileno(), self.proc.pid)
                if not self.conn.poll(60.0):
                    raise RuntimeError("the grading zygote did not fork a worker within 60 s")
                _, pid = self.conn.recv()
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        return pid, Connection(parent_sock.detach())

    def kill(self, pid: int) -> None:
        try:
            with self.lock:
                self.conn.send(("kill", pid))
                if self.conn.poll(10.0):
                    self.conn.recv()
        except (OSError, EOFError, ValueError):  # the zygote is gone: its workers went with it (or end by EOF)
            pass

    def close(self) -> None:
        """Closing the connection makes the zygote kill its workers and exit; it is killed if it does not."""
        try:
            self.conn.close()
        except OSError:
            pass
        try:
            self.proc.wait(5.0)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            self.proc.kill()
            self.proc.wait()


class _Worker:
    """One grading process (a child of the zygote) and the pool's end of its socket."""

    def __init__(self, pid: int, conn, zygote: _Zygote):
        self.pid = pid
        self.conn = conn
        self.zygote = zygote

    def dead(self) -> bool:
        """An idle worker never writes: a readable socket means it ended (EOF)."""
        try:
            return bool(self.conn.poll(0))
        except (OSError, ValueError):
            return True

    def kill(self) -> None:
        # via the zygote, the worker's parent (see _zygote_main); if the zygote itself was killed, closing the
        # socket ends an idle worker, and a busy one ends at its per-request CPU limit
        self.zygote.kill(self.pid)
        try:
            self.conn.close()
        except OSError:
            pass


class GradingPool:
    """Warm worker processes that run math-verify, one request per worker at a time; see the module docstring.

    Args:
        workers: processes kept running (each about 100 MB of memory once math-verify is loaded).
        memory_limit_mb: address-space limit of each worker (None: no limit).
        start_timeout: seconds a new worker may take to report ready (the first one imports math-verify).

    Counters (read them for metrics; they only grow): ``gradings`` (requests sent to a worker), ``timeouts``
    (requests whose worker was killed or died), ``restarts`` (workers replaced).
    """

    def __init__(self, workers: int = 2, *, memory_limit_mb: int | None = 4096, start_timeout: float = 120.0
                 ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"grading workers must be an integer >= 1, got {workers!r}")
        if memory_limit_mb is not None and (not isinstance(memory_limit_mb, int) or memory_limit_mb < 256):
            raise ValueError(f"grading memory_limit_mb must be an integer >= 256 or None, got {memory_limit_mb!r}")
        self.workers = workers
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout = float(start_timeout)
        self.pid = os.getpid()
        self.math_verify_available: bool | None = None
        self.gradings = 0
        self.timeouts = 0
        self.restarts = 0
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()  # every live worker, idle or busy (close() kills them all)
        self._busy = 0
        self._starting = 0
        self._start_error: BaseException | None = None
        self._closed = False
        self._warned_no_math_verify = False
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self, wait: bool = True) -> GradingPool:
        """Start the missing workers; with ``wait``, block until one is ready (``RuntimeError`` if none can start)."""
        with self._cond:
            self._fill()
            if not wait:
                return self
            deadline = time.monotonic() + self.start_timeout + 5.0
            while not self._idle and self._busy == 0:
                if self._closed:
                    raise RuntimeError("the grading pool is closed")
                if self._starting == 0:
                    raise RuntimeError(f"grading workers could not start: {self._start_error!r}") \
                        from self._start_error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no grading worker became ready within {self.start_timeout:g} s")
                self._cond.wait(left)
        return self

    def close(self) -> None:
        """Stop every worker, busy ones included (their callers get a timed-out result)."""
        with self._cond:
            self._closed = True
            self._idle = []
            workers, self._all = self._all, set()
            self._cond.notify_all()
        for w in workers:
            w.kill()
        with self._zygote_lock:
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()

    @property
    def alive(self) -> int:
        """Workers running or starting."""
        with self._cond:
            return len(self._idle) + self._busy + self._starting

    def _fill(self) -> None:
        """Start workers until running + starting == ``workers`` (called holding the lock)."""
        while not self._closed and len(self._idle) + self._busy + self._starting < self.workers:
            self._starting += 1
            threading.Thread(target=self._start_worker, name="verl_prpo-grading-start", daemon=True).start()

    def _zygote_for_workers(self) -> _Zygote:
        """The pool's zygote, started (or restarted, if it died) on demand."""
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote(self.start_timeout)
            return self._zygote

    def _start_worker(self) -> None:
        conn = None
        try:
            zygote = self._zygote_for_workers()
            limit = None if self.memory_limit_mb is None else self.memory_limit_mb * 2**20
            pid, conn = zygote.fork(limit)
            worker = _Worker(pid, conn, zygote)
            if not conn.poll(self.start_timeout):
                worker.kill()
                raise RuntimeError(f"did not report ready within {self.start_timeout:g} s")
            status, _pid = conn.recv()
        except BaseException as exc:  # noqa: BLE001 - reported to the callers waiting in start()/_acquire()
            if conn is not None:
                conn.close()
            logger.error("grading worker failed to start: %r", exc)
            with self._cond:
                self._starting -= 1
                self._start_error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
            self.math_verify_available = status == "ready"
            if self._closed:
                worker.kill()
                return
            self._start_error = None
            self._idle.append(worker)
            self._all.add(worker)
            self._cond.notify_all()

    def _acquire(self) -> _Worker:
        """An idle, live worker (waits for one); a worker found dead while idle is replaced, not used."""
        while True:
            with self._cond:
                while not self._idle:
                    if self._closed:
                        raise RuntimeError("the grading pool is closed")
                    self._fill()
                    if self._busy == 0 and self._starting == 0 and self._start_error is not None:
                        raise RuntimeError(f"grading workers could not start: {self._start_error!r}") \
                            from self._start_error
                    self._cond.wait(1.0)
                self._busy += 1
                worker = self._idle.pop()
            if not worker.dead():
                return worker
            logger.warning("grading worker %d died while idle; replacing it", worker.pid)
            self._replace(worker)

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._busy -= 1
            closed = self._closed
            if closed:
                self._all.discard(worker)
            else:
                self._idle.append(worker)
            self._cond.notify()
        if closed:
            worker.kill()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._all.discard(worker)
            self._busy -= 1
            self.restarts += 1
            self._fill()
            self._cond.notify_all()

    # ------------------------------------------------------------------ grading
    def equivalent(self, pred: str, golds: list[str], timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, bool]:
        """``(math-verify says pred equals one of golds, timed out)``, computed in a worker within ``timeout`` s.

        A worker that has not answered after ``timeout`` seconds (or that died) is killed and replaced; the
        result is then ``(False, True)``. Without math-verify installed the result is ``(False, False)`` (a
        warning once): the caller's string comparison decides.
        """
        if not timeout or not timeout > 0:
            raise ValueError(f"grading timeout must be a number of seconds > 0, got {timeout!r}")
        if os.getpid() != self.pid:
            raise RuntimeError("a GradingPool cannot be used in a forked child; use get_grading_pool()")
        if self.math_verify_available is None:
            self.start(wait=True)
        if not self.math_verify_available:
            if not self._warned_no_math_verify:
                self._warned_no_math_verify = True
                logger.warning("math-verify is not installed; grading falls back to string comparison "
                               "(pip install math-verify)")
            return False, False
        # math-verify's own per-parse/verify limit inside the worker: a slow sympy call ends without a kill
        inner = max(1, int(timeout // 4))
        for attempt in range(2):
            worker = self._acquire()
            try:
                worker.conn.send((pred, golds, inner))
            except (OSError, ValueError):  # died while idle (OOM killer...): another worker, once
                self._replace(worker)
                if attempt == 0:
                    continue
                raise
            break
        t0 = time.monotonic()
        try:
            if worker.conn.poll(timeout):
                _, equal = worker.conn.recv()
                with self._cond:
                    self.gradings += 1
                self._release(worker)
                return bool(equal), False
            why = f"no answer within {timeout:g} s"
        except (EOFError, OSError) as exc:
            why = f"worker died after {time.monotonic() - t0:.1f} s ({exc!r})"
        except BaseException:  # interrupted while waiting: the worker may still be computing
            self._replace(worker)
            raise
        self._replace(worker)
        with self._cond:
            self.gradings += 1
            self.timeouts += 1
        logger.warning("grading timed out (%s; worker killed and replaced; counted as wrong): pred=%r gold=%r",
                       why, pred[:120], [g[:60] for g in golds])
        return False, True


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()
_POOL_OPTIONS: dict = {"workers": 2, "memory_limit_mb": 4096}


def _forget_pool_after_fork() -> None:
    """A forked child must not talk to its parent's workers, and may have inherited a held lock."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def configure_grading(*, workers: int | None = None, memory_limit_mb: int | None | str = "keep") -> None:
    """Set the shared pool's size / worker memory limit; a running pool with other settings is replaced."""
    global _POOL
    new = dict(_POOL_OPTIONS)
    if workers is not None:
        new["workers"] = workers
    if memory_limit_mb != "keep":
        new["memory_limit_mb"] = memory_limit_mb
    GradingPool(**new)  # validates before anything changes (starts nothing)
    with _POOL_LOCK:
        if new == _POOL_OPTIONS:
            return
        _POOL_OPTIONS.update(new)
        old, _POOL = _POOL, None
    if old is not None:
        old.close()


def get_grading_pool() -> GradingPool:
    """The process's shared :class:`GradingPool` (created on first use; workers start on first grading)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = GradingPool(**_POOL_OPTIONS)
        return _POOL


@atexit.register
def _close_pool_at_exit() -> None:
    pool = _POOL
    if pool is not None and pool.pid == os.getpid():
        pool.close()


# ---------------------------------------------------------------------------------------------------------------
# equivalence and grading
# ---------------------------------------------------------------------------------------------------------------


def _equivalent_any(pred: str, golds: list[str], *, timeout: float, max_len: int, use_math_verify: bool,
                    string_fast_path: bool) -> tuple[bool, bool]:
    """``(pred equals one of golds, math-verify timed out)``: strings here, math-verify in a worker."""
    np_ = normalize_answer(pred)
    string_equal = any(np_ == normalize_answer(g) for g in golds)
    if string_equal and string_fast_path:
        return True, False
    if not use_math_verify:
        return string_equal, False
    candidates = [g for g in golds if len(g) <= max_len] if len(pred) <= max_len else []
    if not candidates:  # an answer of over max_len characters is not worth a sympy parse
        return string_equal, False
    equal, timed_out = get_grading_pool().equivalent(pred, candidates, timeout)
    return equal or string_equal, timed_out


def is_equivalent(
    pred: str | None,
    gold: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_len: int = 1000,
    use_math_verify: bool = True,
    string_fast_path: bool = True,
) -> bool:
    """True if the predicted answer equals the gold answer.

    1. normalised string equality (:func:`normalize_answer`) -> True (skipped with ``string_fast_path=False``);
    2. math-verify, in a grading worker process (module docstring): both sides wrapped in ``\\boxed{}`` (unless
       already boxed or ``$..$``), parsed with LaTeX and plain-expression extraction, compared with
       ``verify(gold, pred)``. A timeout (``timeout`` seconds, the worker is then killed) or an exception counts
       as "not equivalent": the string comparison of step 1 decides.

    Inputs longer than ``max_len`` characters skip math-verify.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    return _equivalent_any(pred, [gold], timeout=timeout, max_len=max_len, use_math_verify=use_math_verify,
                           string_fast_path=string_fast_path)[0]


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one response: was a final answer found, is it correct, and what was it.

    ``timed_out``: math-verify did not finish within the timeout (its worker was killed); ``correct`` is then
    the string comparison's verdict.
    """

    answer_found: bool
    correct: bool
    predicted: str | None
    timed_out: bool = False


def grade(response: str | None, ground_truth, *, timeout: float = DEFAULT_TIMEOUT, **kwargs) -> GradeResult:
    """Grade a model response against a ground truth answer, within ``timeout`` seconds of math-verify work.

    The predicted answer is the content of the response's last ``\\boxed{}`` (:func:`last_boxed`); a response
    without one (or with an empty one) has ``answer_found=False, correct=False``. ``ground_truth`` may be a string,
    a number (``27.0`` is treated as ``27``) or a list of acceptable answers (all compared in one worker request,
    so ``timeout`` bounds them together). Other keyword arguments (``max_len``, ``use_math_verify``,
    ``string_fast_path``) are those of :func:`is_equivalent`.
    """
    predicted = last_boxed(response)
    if predicted is None or not predicted.strip():
        return GradeResult(answer_found=False, correct=False, predicted=None)
    golds = []
    for g in ground_truth if isinstance(ground_truth, list | tuple) else [ground_truth]:
        if g is None:
            continue
        if isinstance(g, float) and g.is_integer():
            g = int(g)
        g = str(g).strip()
        if g:
            golds.append(g)
    if not golds:
        return GradeResult(answer_found=True, correct=False, predicted=predicted)
    opts = {"max_len": 1000, "use_math_verify": True, "string_fast_path": True}
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise TypeError(f"grade() got unexpected keyword arguments {sorted(unknown)}")
    opts.update(kwargs)
    correct, timed_out = _equivalent_any(predicted.strip(), golds, timeout=timeout, **opts)
    return GradeResult(answer_found=True, correct=correct, predicted=predicted, timed_out=timed_out)
