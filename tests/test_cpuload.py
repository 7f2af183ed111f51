"""The reading of other processes' CPU load that dynamic threads use."""
from cnnframe import cpuload
from cnnframe.cpuload import CpuLoad


def test_dynamic_threads_leave_cores_busy_elsewhere(monkeypatch):
    """With one core's worth of other work, two threads drop to one; with none, they stay two."""
    monitor = CpuLoad()
    clock = {"now": 100.0, "busy": 50.0, "own": 10.0}
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(monitor, "_busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(cpuload.os, "times", lambda: (clock["own"], 0.0, 0.0, 0.0, 0.0))
    assert monitor.free_cores(2) == 2  # first reading: nothing known yet
    # 1 s later: the system was busy for 2 core-seconds, 1 of them ours -> another process holds a core
    clock.update(now=101.0, busy=52.0, own=11.0)
    assert monitor.free_cores(2) == 1
    # readings are cached for `interval` seconds
    clock.update(now=101.1, busy=52.0, own=11.2)
    assert monitor.free_cores(2) == 1
    # 1 s later: all the busy time was ours
    clock.update(now=102.1, busy=54.0, own=13.2)
    assert monitor.free_cores(2) == 2
    assert monitor.free_cores(1) == 1


def test_unreadable_proc_stat_means_all_cores_free(monkeypatch):
    monitor = CpuLoad()
    monkeypatch.setattr(monitor, "_busy_seconds", lambda: None)
    assert monitor.free_cores(4) == 4


def test_reads_this_machines_proc_stat():
    busy = CpuLoad()._busy_seconds()
    assert busy is None or busy > 0  # None where /proc/stat does not exist
