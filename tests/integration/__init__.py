"""Integration tests: real InfluxDB, VictoriaMetrics and Mosquitto, simulators on ports, daemon subprocesses."""
