"""Modbus drivers: the point config models, the codec and read planner they share, and the transports.

Only the transport modules (``tcp``) import pymodbus, whose API changes between minor versions.
"""
