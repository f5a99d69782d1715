"""``voicebot bench``: load-test voicebot against stock pipecat with simulated ACS calls.

- :mod:`~voicebot.bench.runner`: the command, one step and side at a time;
- :mod:`~voicebot.bench.servers`: the servers under test, each in a process of its own;
- :mod:`~voicebot.bench.stock_pipecat`: the stock pipecat server it compares against;
- :mod:`~voicebot.bench.callers`: the simulated callers and how their answers were paced;
- :mod:`~voicebot.bench.budget`: the declared latency of a turn, and so the framework overhead;
- :mod:`~voicebot.bench.procstat`: CPU and memory from ``/proc``;
- :mod:`~voicebot.bench.report`, :mod:`~voicebot.bench.plot`: the JSON, the table, the PNG.
"""
