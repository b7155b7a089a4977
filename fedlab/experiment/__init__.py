"""An experiment: its validated config, its clients (simulated or site processes), the built TFF process and the round loop, sweeps."""
