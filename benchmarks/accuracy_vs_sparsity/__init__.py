"""Top-1 against sparsity for OptG and its baselines, every method under the same protocol.

Trains, with `optg_jax.train.training.train_and_evaluate`, the same network with the same epochs,
learning rate, sparsity schedule and mask-refresh interval for every method: dense, `magnitude`
(gradual magnitude pruning), `taylor`, `supermask` (OptG without the supermask optimizer) and
`optg`, at each sparsity and seed. Every sparse method ends its ramp at the same step
(`pruning_end_fraction`, two-thirds of training), so the table compares criteria, not how each
survives a last-minute cut. `--budget` adds a budget study (OptG, GMP and Taylor at 99%, one seed,
several run lengths).

  .venv/bin/python -m benchmarks.accuracy_vs_sparsity --quick     # 98% and 99%, one seed
  .venv/bin/python -m benchmarks.accuracy_vs_sparsity             # 90/95/98/99%, 3 seeds
  .venv/bin/python -m benchmarks.accuracy_vs_sparsity --budget --budget-epochs 2 4 8 16
  .venv/bin/python -m benchmarks.accuracy_vs_sparsity --report-only   # tables from finished runs
  # CIFAR-10 through TFDS (not run here):
  .venv/bin/python -m benchmarks.accuracy_vs_sparsity --config configs/resnet32_cifar10.py \
      --data-dir ~/tensorflow_datasets --epochs 160 --image-size 0 --batch-size 256

Each run has its own workdir under `--workdir-root`; a finished run (its record and results.json
exist) is skipped, so an interrupted grid resumes where it stopped, and an interrupted run resumes
from its last checkpoint. After every run, and at the end, the report is rewritten from all finished
runs under the root: `benchmarks/results/accuracy_vs_sparsity.csv` (one row per run),
`accuracy_vs_sparsity.md` (the tables), `accuracy_vs_sparsity.png` (top-1 against sparsity),
`accuracy_vs_sparsity_budget.png`, and the section of `BENCHMARKS.md` between its markers (the
rest of that file is left alone). Hand-written findings go in
`benchmarks/results/accuracy_vs_sparsity_notes.md` and are copied into that section.

Modules: `methods` (the method-name grammar), `runs` (the grid, one config per run, training and
the per-run records), `report` (statistics, tables, CSV, plots, the Markdown section) and `cli`
(the command line; `__main__` runs it).
"""
