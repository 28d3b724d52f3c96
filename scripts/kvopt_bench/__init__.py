"""Benchmarks of kvopt itself: recorded grids, replayed studies, hypervolume.

Used by the scripts in ``scripts/`` (record_grid, bench_search, bench_pruning,
bench_overhead, bench_gain); kept in the package so those scripts share one copy.
"""

__all__: list[str] = []
