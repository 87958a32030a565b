"""`edge-daq simulate watlow-f4` says, after its listening line, when the chamber will be at set point at the
time scale it runs at (the demo's by default), and it ramps at that time scale."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

REPO = Path(__file__).parents[2]


async def test_the_standalone_chamber_announces_and_ramps_at_the_demos_time_scale() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "watlow-f4", "--tcp", "127.0.0.1:0", "--seed", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            listening = (await process.stdout.readline()).decode().strip()
            note = (await process.stdout.readline()).decode().strip()
        match = re.fullmatch(r"watlow-f4 listening on 127\.0\.0\.1:(\d+) \(units 1\)", listening)
        assert match, listening
        assert note == (
            "watlow-f4: chamber air 23 degC, set point 125 degC: within 2 degC after 20.3 model minutes "
            "(2.0 min real time at --time-scale 10)"
        )
        client = AsyncModbusTcpClient("127.0.0.1", port=int(match[1]))
        await client.connect()
        try:
            # 5 degC per model minute, ten times faster: the air leaves room temperature within seconds.
            async with asyncio.timeout(20):
                while True:
                    reply = await client.read_holding_registers(100, count=1, device_id=1)
                    if reply.registers[0] / 10 >= 25.0:
                        break
                    await asyncio.sleep(0.2)
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
