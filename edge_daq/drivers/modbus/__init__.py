"""Modbus drivers: the point config models, the codec and read planner they share, and the transports.

Both transports frame Modbus themselves (``tcp``: MBAP, ``rtu``: RTU); their docstrings say why no library
client is used.
"""
