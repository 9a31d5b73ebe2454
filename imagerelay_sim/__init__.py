"""The upstream simulator: a stand-in for the paid OpenAI and Azure image APIs.

A tool for tests, benchmarks and offline demos (``imagerelay simulate-upstream``), kept
out of the runtime package: the gateway never imports it. Its images come from
:mod:`imagerelay.simulation.render`, the renderer the built-in ``simulator`` channel uses.

- :mod:`imagerelay_sim.server`: the Starlette app, its routes and the control plane
- :mod:`imagerelay_sim.state`: the mutable state shared by handlers and tests
- :mod:`imagerelay_sim.inbound`: request parsing and validation as the real APIs do it
- :mod:`imagerelay_sim.faults`: error shapes and fault rules
- :mod:`imagerelay_sim.wire`: responses that misbehave below HTTP
"""
