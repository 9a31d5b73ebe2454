"""Per-token rate and concurrency limits.

- :mod:`~imagerelay.limits.local`: the rules and the in-process limiter (one process)
- :mod:`~imagerelay.limits.redis`: the same limits shared by every process through Redis
- :mod:`~imagerelay.limits.connection`: that Redis connection and its fail-open policy

services.py's ``SharedState`` builds the Redis limiter and the pool's shared cooldowns
(upstreams/cooldowns.py) from one connection.
"""
