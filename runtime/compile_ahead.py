"""Cold start: compile a CPU plan's kernels from both ends at once.

Numba compiles a kernel the first time it is called, one kernel at a time (it holds a global
compiler lock), and compiling is single-threaded: with an empty kernel cache the first
training step of the GoogLeNet-style benchmark spent ~53 s compiling on one core while the
other idled. Kernels are cached on disk (runtime/jit.py), and Numba looks in that cache when
it first meets a signature, not before; so a second process that compiles kernels and saves
them there does part of the first process's work.

When a CPU plan is built, `start` forks a helper process that walks the plan's kernel calls in
the opposite order from the one its first step takes (the first step meets the forward steps
first to last, then the backward steps last to first; the helper starts from the first step's
backward) and compiles each jitted function those calls reach without running it, saving it
to the cache. The parent, when it reaches a function the helper has saved, loads it instead
of compiling it; and when it reaches the one the helper is compiling at that moment, it waits
for it (the helper says on a pipe which kernel it starts and ends, `HelperProgress`)
rather than compile it a second time. The two meet about half way, and the helper stops when the parent asks
(after the plan's first complete step, see Plan.forward/backward) or when it reaches the end.
Measured from launch to the end of the first training step with an empty cache (bench/'s
cold start, one run each): GoogLeNet-style 53.5 s -> 36.6 s, ResNet-18 41.6 s -> 26.0 s.

How the helper compiles without running: in the child process only, calling a Numba
dispatcher compiles it for the argument types and returns None (`compile_only`). The
kernels' Python code runs as usual around those calls, on the child's copy of the plan's
buffers, with the inputs zeroed (some are checked: labels against the class count). A kernel
whose Python code needs a jitted result goes no further (its error is ignored): the parent
compiles what it missed. Functions already compiled in this process or already in the disk
cache are skipped, so with a warm cache the helper exits at once.

The helper only ever compiles, and writes nothing to the terminal (its output goes to
/dev/null). The parent ends it with SIGTERM, which it turns into an exception, so that a cache
file being written is removed rather than left half done (Numba writes each file aside, then
renames it). It never outlives its parent: the kernel sends it SIGTERM when the parent dies
(prctl PR_SET_PDEATHSIG), and since a handler runs only between bytecodes, not inside a long
LLVM compile, a watchdog thread also ends it within `ORPHAN_GRACE` seconds of finding itself
orphaned. `HELPER_TIME_LIMIT` ends it in any case.

Linux only (fork). `DSLC_COMPILE_AHEAD=0` turns it off; the test suite does, except in the
tests of this module, since its processes compile every kernel in one place anyway.
"""
from __future__ import annotations

import hashlib
import os
import select
import signal
import sys
import threading
import time
import warnings

from . import jit

# Seconds after which the helper ends, whatever it is doing: a safety net for a child that
# could not make progress (it compiles for well under a minute in the largest benchmark).
HELPER_TIME_LIMIT = 600

# Seconds an orphaned helper has to stop by itself (removing the cache file it was writing)
# before its watchdog ends the process outright.
ORPHAN_GRACE = 2.0

# Seconds the parent waits at most for the helper to finish a kernel it reached too (a safety
# net: the helper ends every compile it starts, or dies and closes the pipe).
WAIT_LIMIT = 300

# The signals that end the helper (by its own handlers, see _run_helper).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

# The write ends of the running helpers' stop pipes, which a later helper must close: a pipe
# reads as closed only when every copy of its write end is.
_stop_pipes: set[int] = set()

# The progress pipes of the helpers running now, which a compile in this process first asks
# (_before_compile).
_listening: list[HelperProgress] = []


def progress_digest(dispatcher, signature) -> str:
    """How the helper names a kernel on its progress pipe: a digest of jit.compile_key, so a
    line is short and a whole run's lines fit the pipe's buffer (the helper never blocks on it)."""
    return hashlib.sha1(jit.compile_key(dispatcher, signature).encode()).hexdigest()[:16]


def _before_compile(dispatcher, signature):
    """jit.before_compile: wait while a helper compiles this very kernel."""
    if _listening:
        digest = progress_digest(dispatcher, signature)
        for progress in list(_listening):
            progress.wait_while_compiling(digest)


def helpers_unstopped() -> bool:
    """Whether a helper this process started has not yet been asked to stop (the first complete
    step of its plan asks it). A helper asked to stop may still be ending: a forked child."""
    return bool(_stop_pipes)


def enabled() -> bool:
    """Whether plans start a compile-ahead helper: on Linux, unless DSLC_COMPILE_AHEAD=0."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and os.environ.get("DSLC_COMPILE_AHEAD", "1") != "0"


class HelperProgress:
    """The parent's end of the pipe on which a helper says which kernel it starts ("s DIGEST")
    and ends ("e DIGEST") compiling. Read without blocking, except in wait_while_compiling."""

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self.fd = fd
        self.compiling = None       # the digest of the kernel the helper compiles now
        self._unread = b""
        _listening.append(self)
        jit.set_before_compile(_before_compile)

    def read(self) -> None:
        """Take in what the helper has said so far; at its end (the pipe closed) it compiles
        nothing."""
        while self.fd is not None:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                break
            self._unread += chunk
        *lines, self._unread = self._unread.split(b"\n")
        for line in lines:
            kind, _, digest = line.decode(errors="replace").partition(" ")
            if kind == "s":
                self.compiling = digest
            elif digest == self.compiling:
                self.compiling = None

    def wait_while_compiling(self, digest: str, limit: float = WAIT_LIMIT) -> None:
        """Return once the helper is not compiling the kernel `digest` names, or after `limit`
        s: the caller then loads what the helper saved from the cache, or compiles it itself
        where the helper gave up."""
        self.read()
        deadline = time.monotonic() + limit
        while self.compiling == digest and self.fd is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select([self.fd], [], [], min(remaining, 1.0))
            self.read()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.compiling = None
        if self in _listening:
            _listening.remove(self)


class Helper:
    """The parent's handle on a running helper process."""

    def __init__(self, pid: int, stop_pipe: int, progress: HelperProgress | None = None):
        self.pid = pid
        self._stop_pipe = stop_pipe
        self.progress = progress
        self._reaper = threading.Thread(target=self._reap, name="dslc-compile-ahead-reaper", daemon=True)
        self._reaper.start()

    def _reap(self):
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def stop(self):
        """End the helper now: what it is compiling, the parent has compiled already or will
        not need."""
        if self.progress is not None:
            self.progress.close()
        if self._stop_pipe is None:
            return
        _stop_pipes.discard(self._stop_pipe)
        os.close(self._stop_pipe)
        self._stop_pipe = None
        if self._reaper.is_alive():     # not reaped, so the pid is still the helper's
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the helper to exit; True when it has."""
        self._reaper.join(timeout)
        return not self._reaper.is_alive()

    def __del__(self):
        try:
            self.stop()
        except Exception:   # noqa: BLE001 - at interpreter exit, module state may be gone
            pass


def start(plan) -> Helper | None:
    """Fork a helper that compiles `plan`'s kernels from the end of its first step backwards;
    None where compile-ahead is off. Call on a CPU plan whose calls are bound."""
    if not enabled():
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        read_end, write_end = os.pipe()
    except OSError:         # out of file descriptors: compile in this process alone
        return None
    try:
        progress_read, progress_write = os.pipe()
    except OSError:         # the helper still helps; the parent just cannot wait for it
        progress_read = progress_write = None
    # Ctrl-C or SIGTERM arriving between the fork and the child's own handlers would raise in
    # the child's copy of the caller's code (a KeyboardInterrupt that a trainer catches to save
    # a checkpoint). Blocked across the fork, they wait in the child until _run_helper has its
    # handlers, and in this process until the fork is done.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    parent = os.getpid()
    pid = -1
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a multi-threaded process may deadlock the child:
            # this child takes no lock another thread could hold but Numba's compiler lock,
            # which the forking thread holds whenever anything compiles (and HELPER_TIME_LIMIT
            # ends it).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                for pipe in _stop_pipes | {write_end} | {p.fd for p in _listening} | {progress_read}:
                    if pipe is not None:
                        os.close(pipe)
                for progress in _listening:     # an earlier plan's helper: the parent's to wait for
                    progress.fd = None
                _listening.clear()
                jit.set_before_compile(None)
                _die_with(parent)
                _run_helper(plan, read_end, mask, progress_write)
            finally:
                os._exit(0)
    except OSError:         # no process to spare (a limit, a sandbox): this one compiles alone
        for pipe in (read_end, write_end, progress_read, progress_write):
            if pipe is not None:
                os.close(pipe)
        return None
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(read_end)
    if progress_write is not None:
        os.close(progress_write)
    _stop_pipes.add(write_end)
    return Helper(pid, write_end, None if progress_read is None else HelperProgress(progress_read))


def _die_with(parent: int) -> None:
    """In the helper: end when `parent` does. SIGTERM on the parent's death (Linux; blocked
    until _run_helper's handler is in place, so it reaches that handler), and a watchdog thread
    for the case where that handler cannot run soon enough (inside a compile) or prctl is
    missing. Either way a helper never works on for a parent that is gone."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:      # the parent died before prctl: nothing would signal
        os._exit(0)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        time.sleep(ORPHAN_GRACE)
        os._exit(0)

    threading.Thread(target=watch, name="dslc-compile-ahead-orphan-watch", daemon=True).start()


def _run_helper(plan, stop_pipe, mask, progress_pipe):
    """The child: compile what the plan's calls reach, in the reverse of the first step's order.
    SIGINT and SIGTERM arrive blocked (start); `mask` is the signal mask to restore once this
    process handles them. It says on `progress_pipe` (None: nowhere) which kernel it starts
    and ends compiling."""
    signal.alarm(HELPER_TIME_LIMIT)     # its default action ends the process
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    try:
        os.nice(5)      # the parent's first step is the critical path
    except OSError:
        pass
    from numba.core.registry import CPUDispatcher

    from .kernel_api import Context

    class Stop(Exception):
        """The parent asked the helper to stop (it closed the pipe, or sent SIGTERM), or the
        user pressed Ctrl-C.

        An Exception, not a BaseException: raised inside Numba's compiler, it drops that
        compile, and Numba, which writes a cache file aside and then renames it, removes the
        file it was writing on an Exception only. Should anything swallow it or wrap it in an
        error of its own, the helper still stops (`stopping`, below)."""

    # Set by the signal handler too: code that catches every Exception (Numba's, or
    # _in_disk_cache's fallback) may swallow the Stop it raised, and the helper must stop all
    # the same (seen once in the Ctrl-C test: the helper went on to compile everything).
    stopping = []

    def on_terminate(signum, frame):
        stopping.append(signum)
        raise Stop      # between bytecodes, wherever the helper is

    signal.signal(signal.SIGTERM, on_terminate)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:     # as the parent: ignored stays ignored
        signal.signal(signal.SIGINT, on_terminate)     # Ctrl-C reaches the whole process group
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)    # a signal sent meanwhile arrives now

    seen = set()    # (dispatcher, signature) already handled: many layers share a kernel

    def compile_only(dispatcher, *args, **kwargs):
        if stopping or select.select([stop_pipe], [], [], 0)[0]:
            raise Stop
        if kwargs:
            return None
        signature = tuple(dispatcher.typeof_pyval(a) for a in args)
        if (dispatcher, signature) in seen:
            return None
        seen.add((dispatcher, signature))
        if signature not in dispatcher.overloads and not _in_disk_cache(dispatcher, signature):
            if stopping:
                raise Stop
            digest = progress_digest(dispatcher, signature)
            tell(f"s {digest}\n")
            try:
                dispatcher.compile(signature)
            finally:
                tell(f"e {digest}\n")
        return None

    def tell(line):
        if progress_pipe is not None:
            try:
                os.write(progress_pipe, line.encode())
            except OSError:     # the parent stopped listening (it stopped this helper)
                pass

    CPUDispatcher.__call__ = compile_only
    # The kernels' Python code checks some inputs (labels and token ids must be valid indices):
    # this process's copy of the input buffers, uninitialised so far, is zeroed for that.
    for name in plan.inputs:
        plan.out[name][...] = 0
    ctx = Context(training=plan.training)
    calls = ([(backward, args) for backward, args, _ in reversed(plan._backward_calls)]
             + [(forward, args) for forward, args in reversed(plan._forward_calls)])
    for call, args in calls:
        try:
            call(ctx, *args)
        except Stop:
            return
        except Exception:   # noqa: BLE001 - a kernel that needed a jitted result (module docstring)
            if stopping:    # or a Stop that Numba wrapped in an error of its own
                return


def _in_disk_cache(dispatcher, signature) -> bool:
    """Whether Numba's disk cache holds `dispatcher` compiled for `signature` (the parent then
    loads it: the helper need not). Reads Numba's cache index the way Dispatcher.compile does,
    through Numba internals; where those differ, the answer is False and the helper compiles."""
    try:
        cache = dispatcher._cache
        key = cache._index_key(signature, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:   # noqa: BLE001 - another Numba version: fall back to compiling
        return False
