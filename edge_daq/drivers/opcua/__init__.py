"""OPC UA servers (``driver: opcua``): environmental chambers and PLC-controlled rigs, through asyncua.

The config model (``config``) is light (pydantic only); the driver (``driver``) imports asyncua and is imported
only when the daemon starts an OPC UA instrument.
"""
