"""Systems heterogeneity: device profiles, the simulated clock, and asynchronous rounds' staleness."""
