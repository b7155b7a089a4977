"""Foundations every layer uses: validation, registries, TFF's runtime and its bounded waits, what TFF's client
path repeats done once, ports, array files, storage and its encryption, keys for stateless random ops."""
