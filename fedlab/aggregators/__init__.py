"""Aggregation stages: means, robust rules, compression, central DP, secure sums; seeded randomness for them."""
