"""Unit tests: in-process only, no servers, no simulators on ports, no daemon subprocesses."""
