"""Running under systemd: sd_notify and the watchdog, Prometheus metrics, and the /healthz HTTP endpoint.

The modules are independent of each other and of :mod:`edge_daq.daemon`; they read the pipeline through
:class:`edge_daq.stats.PipelineStats` and small callables, so the supervisor wires them in a few lines.
:mod:`edge_daq.service.lifecycle` is that wiring (and the one module here that knows the daemon): signals,
readiness and watchdog, reload and drain. :mod:`edge_daq.service.supervisor` restarts failed components.
"""

from __future__ import annotations


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as a host and a port; port 0 (any free port) is accepted.

    The syntax of ``http.listen``, which :func:`edge_daq.config.models.split_host_port` validates in gateway
    files. Repeated here so that ``edge-daq status`` does not import the configuration models (and with
    them every driver's) just to read an address.
    """
    host, separator, port = listen.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9108 or [::1]:9108, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
