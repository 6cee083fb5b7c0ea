"""overlayd's benchmark: the engine and the daemon against util-linux and cp, in one run.

Run as root from the checkout: ``make bench`` or ``.venv/bin/python -m tools.bench --help``.
What is measured, how, and the aims: README.md, section "Benchmark".

settings   the options, the constants and the temporary root's layout
baseline   the util-linux recipe and cp -a + sync, undoing exactly what they made
daemon     ``overlayd --standalone`` as a child process, called through OverlaydClient
measures   the cycle and commit measurements (engine, bus, baseline)
overlays   many live overlays: scale, latency at 0 and at N, restart, burst
jobs       commit throughput with a Job and progress vs without; PropertiesChanged per commit
report     rows, the table and the JSON
cleanup    undoing everything and checking nothing is left
"""
