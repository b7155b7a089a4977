"""Data sets, partitioners, tasks (losses and metrics, survival's included) and the sites' own data."""
