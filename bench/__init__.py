"""Benchmarks of atlas_tasks: ``python -m bench [--quick] [--only NAME]``.

Each ``bench_<name>.py`` exposes ``run(quick: bool) -> Report``; figures are ratios against
baselines measured in the same run. Latest figures: ``bench/RESULTS.md``.
"""
