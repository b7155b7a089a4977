"""Aggregation stages: means, robust rules, compression, central and distributed DP, secure sums; seeded randomness for
them."""
