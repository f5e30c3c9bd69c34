"""CPU seconds per process from /proc, to see where a bench phase's CPU goes.

Everything in the bridge bench shares the machine's cores, so CPU the load
generator burns is CPU the system under test does not get. `CpuSplit` reads
utime + stime of named processes (all their threads) at the start and at the
end of a phase; processes we start and reap ourselves (the publishers) are
counted from `os.wait4`'s resource usage instead, since /proc forgets them.
The whole machine's busy time (/proc/stat) is reported too: other work on the
machine shows up as the part no named process accounts for.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (0.0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    # after the ")" of comm: state is field 3, utime and stime fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


def stack_pids(repo: Path) -> dict[str, int]:
    """The local stack's service pids (local_stack/stack.sh writes .stack/run/NAME.pid)."""
    pids = {}
    for path in sorted((repo / ".stack" / "run").glob("*.pid")):
        try:
            pids[path.stem] = int(path.read_text().strip())
        except ValueError:
            continue
    return pids


def reap_cpu_s(proc: subprocess.Popen[Any], timeout: float = 30) -> float:
    """Waits for a child we started and returns the CPU seconds it used (user
    + system); killed if it has not exited within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() > deadline:
            proc.kill()
            deadline = float("inf")
        time.sleep(0.01)


class CpuSplit:
    """CPU seconds each named process used between `__init__` and `finish`."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start = {name: sum(process_cpu_s(p) for p in group)
                       for name, group in pids.items()}
        self._busy = machine_busy_s()
        self._self = os.times()

    def finish(self, reaped: dict[str, float] | None = None) -> dict[str, float]:
        """Per name CPU seconds, plus `reaped` (already counted children), this
        bench process as `bench`, and `other` = machine busy time left over."""
        split = {name: sum(process_cpu_s(p) for p in group) - self._start[name]
                 for name, group in self.pids.items()}
        split.update(reaped or {})
        now = os.times()
        split["bench"] = (now.user - self._self.user) + (now.system - self._self.system)
        split["machine_busy"] = machine_busy_s() - self._busy
        split["other"] = split["machine_busy"] - sum(
            v for k, v in split.items() if k != "machine_busy")
        return {k: round(v, 2) for k, v in split.items()}
