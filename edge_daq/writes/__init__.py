"""Guarded writes to instruments: limits in the rig file, the write service, its events and its control command.

Nothing is writable unless the rig file says so (a point's ``write:``); every write is checked against its
limits before it reaches the wire, goes through the bus of its instrument one transaction at a time, is read
back and compared, and is journaled as ``edge_daq_event`` records. The daemon is not the safety interlock.
"""
