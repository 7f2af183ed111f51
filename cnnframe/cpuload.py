"""How many cores other processes keep busy, read from /proc/stat (Linux; elsewhere: none).

``cnnframe.parallel.threads_for`` asks it how many of the kernels' threads still have a core to
themselves while dynamic threads are on (``cnnframe.set_dynamic``).
"""
import os
import time


class CpuLoad:
    """Cores kept busy by other processes: system-wide busy CPU time (/proc/stat, steal included)
    minus this process's own CPU time, over the last half second or so.

    Why: an OpenMP team waits at every join for its slowest thread.  When another process holds
    a core, the thread that shares it runs in scheduler slices of milliseconds, and a 2-thread
    training epoch on 2 cores got 2-25x slower than on one thread.
    """

    interval = 0.5  # seconds between readings

    def __init__(self):
        self._last = None
        self.others = 0.0
        try:
            self._tick = float(os.sysconf("SC_CLK_TCK"))
        except (AttributeError, ValueError, OSError):
            self._tick = 100.0

    def _busy_seconds(self):
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != b"cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
        return busy / self._tick

    def free_cores(self, n):
        """How many of ``n`` cores other processes leave free (at least 1)."""
        now = time.monotonic()
        last = self._last
        if last is None or now - last[0] >= self.interval:
            busy = self._busy_seconds()
            if busy is None:
                return n
            t = os.times()
            own = t[0] + t[1]
            if last is not None:
                self.others = max(0.0, ((busy - last[1]) - (own - last[2])) / (now - last[0]))
            self._last = (now, busy, own)
        return max(1, n - int(self.others + 0.5))
