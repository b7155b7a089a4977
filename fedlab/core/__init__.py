"""Foundations every layer uses: validation, registries, TFF's runtime and its bounded waits, ports, array files, storage and its encryption, keys for stateless random ops."""
