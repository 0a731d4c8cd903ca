"""The project's benchmarks: scripts that measure, print a table and write it to a file.

Run them as modules from the repository root, e.g. `.venv/bin/python -m benchmarks.step_overhead`
or `.venv/bin/python -m benchmarks.accuracy_vs_sparsity --quick`. Each owns a marked section of
`BENCHMARKS.md` (`benchmarks.report.update_section`) and its files under `benchmarks/results/`.
"""
