"""The ``visa`` driver through two real pyvisa backends: pyvisa-py's ``TCPIP::...::SOCKET`` to the SCPI
simulators, and pyvisa-sim with the shipped Keithley 2400 definition (two SourceMeters on one GPIB board)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from edge_daq.cli.probe import _list_visa
from edge_daq.drivers.scpi.config import VisaConfig
from edge_daq.drivers.scpi.visa import PLUGIN, VisaLink
from edge_daq.errors import DriverError
from edge_daq.record import Record
from edge_daq.scheduling import LinkScheduler, RecordBuilder, ScheduledInstrument
from edge_daq.stats import InstrumentStats
from simulators import LineServer, create_line_server
from simulators.modbus_server import Faults
from tests.hostile_servers import line_server, stream_forever, tcp_server

REPO = Path(__file__).resolve().parents[2]
SIM_DEFINITION = REPO / "simulators" / "pyvisa_sim" / "keithley-2400.yaml"
SIM_LIBRARY = f"{SIM_DEFINITION}@sim"


def profile(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config" / "profiles" / f"{name}.yaml").read_text())
    del data["profile"]
    return data


def visa_config(resource: str, *, name: str = "smu", base: str = "keithley-2400", **keys: Any) -> VisaConfig:
    data = profile(base) | {"name": name, "driver": "visa", "resource": resource, "timeout": 0.5, "interval": 0.05}
    return VisaConfig.model_validate(data | keys)


def socket_resource(port: int) -> str:
    return f"TCPIP0::127.0.0.1::{port}::SOCKET"


async def poll_once(config: VisaConfig) -> Any:
    link = PLUGIN.open_link([config])
    await link.open()
    try:
        return await PLUGIN.make_instrument(config).poll(link)
    finally:
        await link.close()


class Running:
    """Schedulers of several links, as the daemon runs them, and the records they emit."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.members: dict[str, ScheduledInstrument] = {}
        self.schedulers: list[LinkScheduler] = []

    def add(self, configs: list[VisaConfig]) -> VisaLink:
        link = PLUGIN.open_link(configs)
        members = []
        for config in configs:
            stats = InstrumentStats(rig="r", instrument=config.name, link=link.describe)
            member = ScheduledInstrument(
                instrument=PLUGIN.make_instrument(config),  # type: ignore[arg-type]
                builder=RecordBuilder(config, {}),
                stats=stats,
            )
            self.members[config.name] = member
            members.append(member)
        self.schedulers.append(LinkScheduler(link=link, instruments=members, emit=self.records.append))
        return link

    def values(self, name: str) -> list[Record]:
        return [record for record in self.records if record.series.measurement == name]

    async def until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(scheduler.run()) for scheduler in self.schedulers]
            try:
                async with asyncio.timeout(within):
                    while not condition():
                        await asyncio.sleep(0.02)
            finally:
                for task in tasks:
                    task.cancel()


# ------------------------------------------------------------------------------------ pyvisa-py, SOCKET


async def test_keithley_2400_through_pyvisa_py_socket() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=1, time_scale=0) as server:
        result = await poll_once(visa_config(socket_resource(server.port)))
        device: Any = server.device
    assert result.failed == []
    assert result.fields["v"] == pytest.approx(device.voltage)
    assert 0 < float(result.fields["i"]) < device.compliance
    assert result.fields["compliance_tripped"] == 0
    assert result.fields["scpi_errors"] == 0


async def test_a_manager_closed_by_other_code_in_the_process_is_opened_again() -> None:
    """pyvisa has one ResourceManager per library in a process: a script (or a test) that closes its own
    closes the driver's too; the driver then opens a new one instead of failing every open."""
    import pyvisa

    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=1, time_scale=0) as server:
        assert (await poll_once(visa_config(socket_resource(server.port)))).failed == []
        await asyncio.to_thread(lambda: pyvisa.ResourceManager("@py").close())
        result = await poll_once(visa_config(socket_resource(server.port)))
    assert result.failed == []
    assert result.fields["scpi_errors"] == 0


async def test_daq970a_through_pyvisa_py_socket() -> None:
    async with create_line_server("keysight-daq970a", tcp=("127.0.0.1", 0), seed=3, time_scale=0) as server:
        result = await poll_once(visa_config(socket_resource(server.port), base="keysight-daq970a", timeout=1.0))
    temperatures = [result.fields[f"t{channel}"] for channel in range(101, 111) if f"t{channel}" in result.fields]
    assert len(temperatures) + len(result.failed) == 10
    assert all(isinstance(value, float) and -50 < value < 200 for value in temperatures)
    assert result.fields["scpi_errors"] == 0


async def test_identity_mismatch_is_a_clear_error() -> None:
    async with create_line_server("keysight-daq970a", tcp=("127.0.0.1", 0), time_scale=0) as server:
        config = visa_config(socket_resource(server.port))  # a Keithley profile on a DAQ970A
        with pytest.raises(Exception, match=r"does not contain 'MODEL 24'"):
            await poll_once(config)


async def test_silence_times_out_once_per_outage_and_the_instrument_recovers() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0, seed=2) as server:
        running = Running()
        running.add([visa_config(socket_resource(server.port), timeout=0.2)])
        member = running.members["smu"]

        def recovered_after_silence() -> bool:
            if len(running.values("smu")) >= 2 and not server.faults.silent_all and member.stats.failures == 0:
                server.faults = Faults(silent_all=True)
            elif member.stats.consecutive_failures >= 2:
                server.faults = Faults()
            return member.stats.failures >= 2 and member.stats.consecutive_failures == 0

        await running.until(recovered_after_silence)
    assert "no reply" in member.stats.last_error or member.stats.last_error == ""
    statuses = [record for record in running.records if record.series.measurement == "edge_daq_status"]
    assert any(record.fields["ok"] is False for record in statuses)
    assert statuses[-1].fields["ok"] is True


async def test_a_reply_past_max_reply_bytes_fails_and_the_link_reconnects() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await stream_forever(writer, b"1" * 4096)

    async with tcp_server(flood) as port:
        config = visa_config(
            socket_resource(port), identity=None, init=[], drain_errors=False, max_reply_bytes=1024,
            points=[{"query": "X?", "name": "x"}],
        )  # fmt: skip
        with pytest.raises(Exception, match="longer than max_reply_bytes"):
            await poll_once(config)


async def test_a_hung_resource_does_not_delay_another_resources_polls() -> None:
    """One instrument accepts and never answers: its own link's worker waits out its timeout; the other
    resource, on its own link and thread, keeps its schedule."""

    async def never_replies(line: bytes, writer: asyncio.StreamWriter) -> None:
        return None

    async with (
        line_server(never_replies) as hung_port,
        create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=4, time_scale=0) as server,
    ):
        running = Running()
        hung_timeout = 0.8
        running.add([visa_config(socket_resource(hung_port), name="hung", timeout=hung_timeout, identity=None)])
        running.add([visa_config(socket_resource(server.port), name="smu", interval=0.05)])
        hung, healthy = running.members["hung"], running.members["smu"]
        await running.until(lambda: hung.stats.failures >= 2 and len(running.values("smu")) >= 40)
    assert "no reply" in hung.stats.last_error
    assert healthy.stats.failures == 0
    # The healthy polls started on time: at worst in the 0.5 s bucket, below the hung instrument's timeout.
    assert healthy.stats.lateness.quantile(1.0) <= 0.5 < hung_timeout


# ------------------------------------------------------------------------------------ pyvisa-sim, GPIB


def test_gpib_instruments_of_one_board_share_a_link() -> None:
    a = visa_config("GPIB0::24::INSTR", name="a", visa_library=SIM_LIBRARY)
    b = visa_config("GPIB0::25::INSTR", name="b", visa_library=SIM_LIBRARY)
    other_board = visa_config("GPIB1::24::INSTR", name="c", visa_library=SIM_LIBRARY)
    usb = visa_config("USB0::0x05E6::0x2400::1234567::INSTR", name="d", visa_library=SIM_LIBRARY)
    assert PLUGIN.link_key(a) == PLUGIN.link_key(b)
    assert len({PLUGIN.link_key(config) for config in (a, other_board, usb)}) == 3
    assert PLUGIN.open_link([a, b]).describe == "visa://GPIB0"


async def test_pyvisa_sim_gpib_board_and_usb() -> None:
    running = Running()
    running.add([
        visa_config("GPIB0::24::INSTR", name="a", visa_library=SIM_LIBRARY),
        visa_config("GPIB0::25::INSTR", name="b", visa_library=SIM_LIBRARY),
    ])  # fmt: skip
    running.add([visa_config("USB0::0x05E6::0x2400::1234567::INSTR", name="u", visa_library=SIM_LIBRARY)])
    await running.until(lambda: all(len(running.values(name)) >= 3 for name in ("a", "b", "u")))
    for name, volts, tripped in (("a", 3.3, 0), ("b", 5.0, 1), ("u", 3.3, 0)):
        fields = running.values(name)[-1].fields
        assert fields["v"] == pytest.approx(volts)
        assert fields["compliance_tripped"] == tripped
        assert fields["scpi_errors"] == 0
        assert running.members[name].stats.failures == 0
    reader: Any = running.members["b"].instrument
    assert "7654321" in reader.reader.identity


async def test_a_refused_connection_is_one_error_per_outage_with_backoff() -> None:
    async with tcp_server(lambda reader, writer: asyncio.sleep(0)) as port:
        pass  # closed again: nothing listens on this port any more
    running = Running()
    running.add([visa_config(socket_resource(port), name="gone", interval=0.02)])
    member = running.members["gone"]
    with structlog.testing.capture_logs() as logs:
        await running.until(lambda: member.stats.failures >= 4)
    assert "Connection refused" in member.stats.last_error
    assert [entry["event"] for entry in logs].count("instrument_failed") == 1
    assert member.stats.consecutive_failures == member.stats.failures
    assert member.retry_at > 0  # backing off


async def test_a_backend_that_returns_errors_without_raising_times_out() -> None:
    """pyvisa-sim answers a read of an address with no device with an error status and no exception: pyvisa's
    read_bytes would spin on it for ever; the driver's read raises, and the poll fails within its timeout."""
    config = visa_config("GPIB0::9::INSTR", name="nobody", visa_library=SIM_LIBRARY, timeout=0.2, identity=None)
    link = PLUGIN.open_link([config])
    await link.open()
    try:
        started = time.monotonic()
        with pytest.raises(DriverError, match=r"visa://GPIB0::9::INSTR: .*failed"):
            await PLUGIN.make_instrument(config).poll(link)
        assert time.monotonic() - started < 1.0
    finally:
        await link.close()


async def test_a_wedged_library_call_abandons_one_worker_and_keeps_the_link_down() -> None:
    """A call that never returns (a driver wedged in the kernel: no backend at hand does that without spinning
    a core, so a blocked call of our own stands in for it) is abandoned after its timeout and the grace; no
    second thread is started while it is stuck, and the link opens again once it returns."""
    config = visa_config("GPIB0::24::INSTR", name="stuck", visa_library=SIM_LIBRARY, timeout=0.1)
    link = PLUGIN.open_link([config])
    await link.open()
    release = threading.Event()
    try:
        with pytest.raises(DriverError, match=r"did not return within 2\.1 s"):
            await link._call(release.wait, within=config.timeout)
        assert not link.is_open
        with pytest.raises(DriverError, match="still stuck in a call"):
            await link.open()
        stuck = [thread for thread in threading.enumerate() if thread.name == "edge-daq-visa visa://GPIB0"]
        assert len(stuck) == 1
        assert stuck[0].daemon
        release.set()
        async with asyncio.timeout(5):
            while stuck[0].is_alive():
                await asyncio.sleep(0.01)
        await link.open()
        result = await PLUGIN.make_instrument(config).poll(link)
        assert result.fields["v"] == pytest.approx(3.3)
    finally:
        release.set()
        await link.close()


def test_loader_registry_knows_visa(tmp_path: Path) -> None:
    from edge_daq.drivers import config_model

    assert config_model("visa") is VisaConfig
    assert isinstance(LineServer, type)


async def test_shipped_visa_profiles_against_pyvisa_sim() -> None:
    """The Keithley 2450 (USB-TMC) and Keysight 34465A (HiSLIP) profiles, as a rig uses them."""
    running = Running()
    smu = visa_config("USB0::0x05E6::0x2450::04123456::INSTR", name="smu", base="keithley-2450")
    dmm = visa_config("TCPIP0::127.0.0.1::hislip0::INSTR", name="dmm", base="keysight-34465a")
    running.add([smu.model_copy(update={"visa_library": SIM_LIBRARY})])
    running.add([dmm.model_copy(update={"visa_library": SIM_LIBRARY})])
    await running.until(lambda: bool(running.values("smu")) and bool(running.values("dmm")))
    assert running.values("smu")[0].fields == {
        "v": 3.3, "i": pytest.approx(1.25e-6), "compliance_tripped": 0, "output_on": 1, "scpi_errors": 0,
    }  # fmt: skip
    assert running.values("dmm")[0].fields == {
        "vdc": pytest.approx(1.23456789),
        "internal_temp": 34.1,
        "scpi_errors": 0,
    }


async def test_probe_visa_and_list_visa() -> None:
    from tests.integration.test_probe import probe

    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), time_scale=0) as server:
        code, text = await probe("--visa", socket_resource(server.port), "-q", "*IDN?", "-q", ":READ?")
        assert code == 0
        assert "MODEL 2400" in text
        assert " ms)" in text
        code, text = await probe("--visa", socket_resource(server.port), "-q", ":OUTP ON", "--timeout", "0.2")
        assert code == 1
        assert "no reply to ':OUTP ON'" in text
    code, text = await probe("--visa", "not a resource", "-q", "*IDN?")
    assert code == 2
    assert "resource" in text
    out = io.StringIO()
    assert _list_visa(SIM_LIBRARY, out) == 0
    assert "GPIB0::24::INSTR" in out.getvalue().splitlines()


def test_visa_overhead_benchmark() -> None:
    from tests.integration.test_bench_smoke import run_benchmark

    output = run_benchmark("bench.visa_overhead")
    assert output.count("ratio edge-daq/pyvisa:") == 1  # --quick: the loopback figure only


async def test_a_restarted_instrument_is_reconnected_and_its_identity_checked_again() -> None:
    async with create_line_server("keithley-2400", tcp=("127.0.0.1", 0), seed=11, time_scale=0) as first:
        port = first.port
        config = visa_config(socket_resource(port), timeout=0.3)
        link = PLUGIN.open_link([config])
        instrument = PLUGIN.make_instrument(config)
        await link.open()
        assert (await instrument.poll(link)).failed == []
        first_identity = instrument.reader.identity
    try:
        with pytest.raises(DriverError):  # the instrument is off: lost connection (or no reply)
            await instrument.poll(link)
        async with create_line_server("keithley-2400", tcp=("127.0.0.1", port), seed=12, time_scale=0):
            if not link.is_open:  # what the scheduler does after a lost connection
                await link.open()
            assert (await instrument.poll(link)).failed == []  # the session reopens, *IDN? is asked again
    finally:
        await link.close()
    assert instrument.reader.identity != first_identity  # *IDN? asked again of the new instrument
