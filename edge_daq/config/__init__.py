"""Configuration: the gateway file, rig files and instrument profiles (see the configuration contract).

Import what you need from its modules (``edge_daq.config.loader``, ``.models``, ``.types``): this file
imports nothing, so a plugin that imports ``edge_daq.config.types`` does not pull in the loader, and the
package imports the same in any order.
"""
