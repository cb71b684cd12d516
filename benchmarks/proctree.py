"""Run one command as its own process and measure it whole: wall time, the peak of the summed
resident memory of its whole process tree, and what it left running.

``wait4``'s ``ru_maxrss`` is the largest *single* process among the command and the children
it waited for, so a rebuild with two parse workers reports one worker's or the driver's peak,
never their sum. The sum needs sampling: a thread reads ``/proc`` every ``interval`` seconds,
walking ``/proc/PID/task/TID/children`` from this process down, and adds up ``VmRSS``. This
process is made a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so a worker whose parent
exits is re-parented here and stays in the sum, and anything still alive when the command
has exited is found, reported and ended (by its pid). Samples can miss a peak shorter than the
interval; ``max_single_rss_mib`` (exact) bounds it from below, and ``peak_tree_rss_mib`` is
the larger of the two.

Linux only. One command at a time per process: every descendant is counted as the command's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_PAGE = os.sysconf("SC_PAGE_SIZE")


def become_subreaper() -> bool:
    """Adopt orphaned descendants (so they stay measurable); False where Linux refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this process as Ctrl-C does: by an exception, so that ``measure``
    ends the command it is waiting for."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children of all its threads, recursively)."""
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                kids = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                out.append(kid)
                todo.append(kid)
    return out


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0     # gone between listing and reading, or a zombie


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
    except OSError:
        return ""


@dataclass
class Measured:
    argv: list[str]
    exit_code: int
    wall_s: float
    peak_tree_rss_mib: float
    sampled_tree_rss_mib: float
    max_single_rss_mib: float
    peak_processes: int
    samples: int
    left_running: list[str] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0


class _Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._stop_event.is_set():
            pids = descendants(me)
            total = sum(rss_bytes(p) for p in pids)
            self.samples += 1
            if total > self.peak:
                self.peak = total
            self.peak_processes = max(self.peak_processes, len(pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _end_leftovers(wait_s: float = 5.0, term_s: float = 5.0) -> list[str]:
    """Describe, then end, whatever the command left running below this process ``wait_s``
    after it exited (helpers such as multiprocessing's resource tracker exit on their own once
    they see their parent gone, which takes a moment): SIGTERM, and SIGKILL ``term_s`` later."""
    deadline = time.monotonic() + wait_s
    while True:
        _reap()
        left = [p for p in descendants(os.getpid()) if _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    described = [f"{pid} {cmdline(pid)[:200]}" for pid in left]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in left if _alive(p)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + term_s
        while alive and time.monotonic() < deadline:
            _reap()
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.1)
        if not alive:
            break
    _reap()
    return described


def _reap() -> None:
    """Collect adopted orphans that have exited (never the command itself: it is waited for
    before this runs)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def measure(argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path,
            interval: float = 0.05) -> Measured:
    """Run ``argv`` to the end with its stdout and stderr in files, and measure it."""
    sampler = _Sampler(interval)
    load_before = os.getloadavg()[0]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # stopped (Ctrl-C, SIGTERM): end the command's whole tree, so a rerun that
            # resumes never finds a half-finished command still writing
            sampler.stop()
            _end_leftovers(wait_s=0)
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    left = _end_leftovers()
    single = usage.ru_maxrss * 1024
    # the tree's sum is never below its largest process: a peak between samples shows there
    return Measured(argv=argv, exit_code=proc.returncode, wall_s=round(wall, 3),
                    peak_tree_rss_mib=round(max(sampler.peak, single) / 2**20, 1),
                    sampled_tree_rss_mib=round(sampler.peak / 2**20, 1),
                    max_single_rss_mib=round(single / 2**20, 1),
                    peak_processes=sampler.peak_processes, samples=sampler.samples,
                    left_running=left, load_before=load_before,
                    load_after=os.getloadavg()[0])
