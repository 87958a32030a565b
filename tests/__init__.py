"""edge-daq tests: ``unit/`` (no servers, seconds) and ``integration/`` (real servers, simulators, daemons).

A package, so that every test imports the shared helpers one way: ``from tests.servers import ...``.
"""
