#!/usr/bin/python3
"""A Modbus RTU device on a serial line for the tests: pymodbus's RTU server with the data model
of modbus_device.py (200 holding registers, holding register n starts at n; input register n at
1000 + n; 64 coils; 64 discrete inputs), for unit ids 3 and 4 only; any other unit id gets no
answer, as on a real bus. Unit id 0 is a broadcast: written to every unit, never answered
(Modbus over Serial Line v1.02, 2.1).

usage: modbus_rtu_device.py SERIAL_PORT [--baud N] [--parity N|E|O] [--stopbits 1|2] [--tcp HOST:PORT] [--bad-crc]

--stopbits  default: 2 without parity, 1 with (Modbus over Serial Line 2.5.1).
--tcp       also serves the same registers over Modbus TCP on HOST:PORT: a second way for a test
            to read what reached the device without using the serial line.
--bad-crc   every answer leaves with its CRC's bytes inverted.

Prints "listening" once the serial port is open (and the TCP socket bound).
"""
import argparse
import asyncio
import logging

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.framer.rtu_framer import ModbusRtuFramer
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer

UNITS = (3, 4)


def context() -> ModbusServerContext:
    def unit():
        return ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [0] * 64),
            co=ModbusSequentialDataBlock(0, [0] * 64),
            hr=ModbusSequentialDataBlock(0, list(range(200))),
            ir=ModbusSequentialDataBlock(0, [1000 + n for n in range(200)]),
            zero_mode=True,
        )
    return ModbusServerContext(slaves={u: unit() for u in UNITS}, single=False)


def broken_crc(response):
    """Encodes the answer as the RTU framer would, then spoils its CRC."""
    frame = bytearray(ModbusRtuFramer(None).buildPacket(response))
    frame[-1] ^= 0xFF
    frame[-2] ^= 0xFF
    return bytes(frame), True


async def main() -> None:
    # pymodbus logs ignored unit ids and closed connections as errors.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser()
    ap.add_argument("port")
    ap.add_argument("--baud", type=int, default=19200)
    ap.add_argument("--parity", default="E", choices=["N", "E", "O"])
    ap.add_argument("--stopbits", type=int, choices=[1, 2])
    ap.add_argument("--tcp")
    ap.add_argument("--bad-crc", action="store_true")
    args = ap.parse_args()
    ctx = context()
    serial = await StartAsyncSerialServer(
        context=ctx,
        framer=ModbusRtuFramer,
        port=args.port,
        baudrate=args.baud,
        parity=args.parity,
        bytesize=8,
        stopbits=args.stopbits or (2 if args.parity == "N" else 1),
        timeout=0.005,
        ignore_missing_slaves=True,
        broadcast_enable=True,
        defer_start=True,
        **({"response_manipulator": broken_crc} if args.bad_crc else {}),
    )
    await serial.start()
    tasks = [asyncio.create_task(serial.serve_forever())]
    if args.tcp:
        host, port = args.tcp.rsplit(":", 1)
        tcp = await StartAsyncTcpServer(context=ctx, address=(host, int(port)), defer_start=True)
        tasks.append(asyncio.create_task(tcp.serve_forever()))
    asyncio.get_running_loop().call_later(0.3, lambda: print("listening", flush=True))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
