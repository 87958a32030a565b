"""SCPI and line-oriented ASCII instruments over a serial port (``scpi-serial``) or a raw TCP socket (``scpi-tcp``).

The config models (``config``) are light; the driver (``driver``) is imported only when the daemon starts.
"""
