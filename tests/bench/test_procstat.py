from __future__ import annotations

import asyncio
import os
import time

from voicebot.bench.procstat import ProcessSampler, cpu_seconds, machine_busy_seconds, rss_bytes


def test_reads_this_process() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass

    assert cpu_seconds(os.getpid()) - before >= 0.05
    assert 10_000_000 < rss_bytes(os.getpid()) < 10_000_000_000
    busy, total = machine_busy_seconds()
    assert 0 < busy <= total


async def test_sampler_gives_cpu_and_memory_over_a_window() -> None:
    sampler = ProcessSampler(os.getpid(), interval_secs=0.05)
    sampler.start()
    t0 = time.monotonic()
    await asyncio.sleep(0.01)  # the first sample
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # busy on the loop: the sampler waits its turn
        pass
    await sampler.stop()
    t1 = time.monotonic()

    cpu = sampler.cpu_percent(t0 - 1, t1)
    assert cpu is not None and cpu > 50
    assert sampler.max_rss(t0 - 1, t1) == max(s.rss for s in sampler.samples)
    assert sampler.cpu_percent(t1 + 1, t1 + 2) is None


def test_a_gone_process_gives_no_sample() -> None:
    sampler = ProcessSampler(2**22 + 12345)

    assert sampler.read() is None
    assert sampler.samples == []
