"""The administrators' API (``/admin``): channels, users and their keys, balances, usage."""
