"""Energy from the process's own work: fake clocks and /proc/stat, a real busy neighbour, RAM
included or excluded, contamination."""
import math
import subprocess
import sys
import time

import pytest

from data.energy.process import (CONTAMINATION_SHARE, JOULES_PER_KWH, PowerModel, ProcessClock, Usage,
                                 contaminated, machine_busy_seconds, process_record)

TICKS = 100.0


def proc_stat(user, system, idle, nice=0, iowait=0, irq=0, softirq=0, steal=0):
    """/proc/stat as the kernel writes it (clock ticks), its per-CPU lines after the total."""
    return (f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\n"
            f"cpu0 {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\n"
            "intr 12345\nctxt 678\n")


class FakeMachine:
    """Clocks that advance only when told: wall seconds, this process's CPU-seconds and the
    machine's busy ticks (this process's work included, as the kernel counts it)."""

    def __init__(self):
        self.wall, self.own, self.busy_ticks, self.idle_ticks = 100.0, 5.0, 10_000, 50_000

    def run(self, wall, own, others):
        self.wall += wall
        self.own += own
        self.busy_ticks += round((own + others) * TICKS)
        self.idle_ticks += round(max(2 * wall - own - others, 0) * TICKS)

    def clock(self):
        return ProcessClock(wall=lambda: self.wall, own_cpu=lambda: {0: self.own},
                            proc_stat=lambda: proc_stat(self.busy_ticks, 0, self.idle_ticks),
                            ticks_per_second=TICKS)


def test_proc_stat_busy_time_counts_work_not_idle_waiting_or_steal():
    text = proc_stat(user=300, system=100, idle=5000, nice=20, iowait=400, irq=5, softirq=15, steal=900)
    assert machine_busy_seconds(text, TICKS) == pytest.approx((300 + 20 + 100 + 5 + 15) / TICKS)
    assert math.isnan(machine_busy_seconds(None, TICKS))


def test_usage_against_a_fake_clock_and_fake_proc_stat():
    machine = FakeMachine()
    clock = machine.clock()
    start = clock.snapshot()
    machine.run(wall=10.0, own=4.0, others=6.0)
    usage = Usage.between(start, clock.snapshot())
    assert (usage.wall_seconds, usage.cpu_seconds) == pytest.approx((10.0, 4.0))
    assert usage.others_cpu_seconds == pytest.approx(6.0)
    assert usage.others_share(cpus=2) == pytest.approx(0.3)


MODEL = PowerModel(cpu_watts=8.0, ram_watts=10.0, cpus=2)
CODECARBON = {"duration": 10.0, "emissions": 1e-6, "emissions_rate": 1e-7, "cpu_power": 8.0, "gpu_power": 0.0,
              "ram_power": 10.0, "cpu_energy": 8 * 10 / JOULES_PER_KWH, "gpu_energy": 0.0,
              "ram_energy": 10 * 10 / JOULES_PER_KWH, "energy_consumed": 18 * 10 / JOULES_PER_KWH}


def test_energy_follows_cpu_seconds_not_elapsed_time():
    # the same 4 CPU-seconds of work, once in 4 s alone and once stretched to 10 s by neighbours
    alone = process_record(dict(CODECARBON, duration=4.0), Usage(4.0, 4.0, 0.0), MODEL, 0.05)
    crowded = process_record(CODECARBON, Usage(10.0, 4.0, 12.0), MODEL, 0.05)
    for record in (alone, crowded):
        assert record["cpu_energy"] == pytest.approx(8.0 * 4.0 / 2 / JOULES_PER_KWH)   # half the machine's CPU time
        assert record["ram_energy"] == pytest.approx(10.0 * 4.0 / 2 / JOULES_PER_KWH)
        assert record["energy_consumed"] == pytest.approx(18.0 * 2.0 / JOULES_PER_KWH)
        assert record["emissions"] == pytest.approx(record["energy_consumed"] * 0.05)
        assert record["cpu_seconds"] == 4.0
    assert crowded["others_cpu_seconds"] == 12.0 and crowded["cpu_power"] == pytest.approx(1.6)   # 16 J over 10 s


def test_ram_energy_is_reported_apart_and_counted_only_when_included():
    usage = Usage(10.0, 4.0, 0.0)
    included = process_record(CODECARBON, usage, MODEL, 0.05)
    excluded = process_record(CODECARBON, usage, PowerModel(8.0, 10.0, 2, include_ram=False), 0.05)
    assert excluded["ram_energy"] == included["ram_energy"] > 0
    assert excluded["energy_consumed"] == pytest.approx(excluded["cpu_energy"])
    assert included["energy_consumed"] == pytest.approx(included["cpu_energy"] + included["ram_energy"])
    assert excluded["emissions"] == pytest.approx(included["emissions"] * 8 / 18)


def test_counters_are_kept_as_read():
    # a counter (RAPL) measures the CPU: CodeCarbon's figure stays, only the RAM model is redone
    record = process_record(CODECARBON, Usage(10.0, 4.0, 0.0), PowerModel(None, 10.0, 2), 0.05)
    assert record["cpu_energy"] == CODECARBON["cpu_energy"]


def test_contamination_is_others_share_of_the_machine_above_the_threshold():
    assert contaminated(cpu_seconds_of_others=12.0, wall_seconds=10.0, cpus=2)        # 60%
    assert not contaminated(cpu_seconds_of_others=1.0, wall_seconds=10.0, cpus=2)     # 5%
    assert CONTAMINATION_SHARE == 0.25


BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


def burn(cpu_seconds: float) -> None:
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


def measured_estimate(neighbours: int) -> tuple[float, Usage]:
    clock = ProcessClock()
    loops = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=6)]) for _ in range(neighbours)]
    try:
        time.sleep(0.3 if neighbours else 0)
        start = clock.snapshot()
        burn(0.8)
        usage = Usage.between(start, clock.snapshot())
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    record = process_record(dict(CODECARBON, duration=usage.wall_seconds), usage, MODEL, 0.05)
    return record["energy_consumed"], usage


def test_a_busy_neighbour_does_not_change_the_estimate():
    alone, _ = measured_estimate(neighbours=0)
    crowded, usage = measured_estimate(neighbours=2)
    # the same CPU-seconds of work, whatever the elapsed time (generous: CPU time resolution,
    # and contention making the same work take slightly more CPU time)
    assert crowded == pytest.approx(alone, rel=0.2)
    assert usage.others_cpu_seconds > 0.5 * usage.wall_seconds    # the neighbours were seen


def test_each_components_share_is_said_and_ram_left_out_of_totals_is_said():
    from data.energy.process import describe_shares

    usage = Usage(10.0, 4.0, 0.0)
    included = process_record(CODECARBON, usage, MODEL, 0.05)
    excluded = process_record(CODECARBON, usage, PowerModel(8.0, 10.0, 2, include_ram=False), 0.05)
    assert describe_shares(included) == "CPU 44%, RAM 56%"          # 8 W : 10 W
    assert describe_shares(excluded) == "CPU 44%, RAM 56% (RAM not in totals)"


def test_a_pass_shorter_than_a_clock_tick_is_measured():
    # /proc's user and system times move in 10 ms ticks; a sparse replay pass can take 1 ms,
    # and would read as no work (and no energy). The scheduler's count is in nanoseconds.
    import os
    import threading

    from data.energy.process import own_cpu_seconds, thread_cpu_seconds

    tid = str(threading.get_native_id())
    if not os.path.exists(f"/proc/self/task/{tid}/schedstat"):
        pytest.skip("this kernel gives no per-thread scheduler counts")
    before = own_cpu_seconds()[int(tid)]
    start = time.thread_time()
    while time.thread_time() - start < 0.003:
        pass
    used = own_cpu_seconds()[int(tid)] - before
    assert 0.003 <= used < 0.5
    assert thread_cpu_seconds("0", 100.0) is None   # no such thread
