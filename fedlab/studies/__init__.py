"""Studies made of runs: comparisons and tuning, privacy, cross-silo medical benchmarks, analysis tables."""
