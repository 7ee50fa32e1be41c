#!/usr/bin/python3
"""A Modbus TCP device for the tests: pymodbus's server with 200 holding registers, 200 input
registers, 64 coils and 64 discrete inputs (addresses 0-based, as on the wire). Holding register
n starts at n, input register n at 1000 + n. It answers unit ids 1 and 2 only, as a real device
on a gateway would (any other unit id gets no answer).

usage: modbus_device.py HOST PORT
Prints "listening" once the socket is bound.
"""
import asyncio
import logging
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncTcpServer


def context() -> ModbusServerContext:
    def unit():
        return ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [0] * 64),
            co=ModbusSequentialDataBlock(0, [0] * 64),
            hr=ModbusSequentialDataBlock(0, list(range(200))),
            ir=ModbusSequentialDataBlock(0, [1000 + n for n in range(200)]),
            zero_mode=True,
        )
    return ModbusServerContext(slaves={1: unit(), 2: unit()}, single=False)


async def main() -> None:
    # pymodbus logs every closed client connection as an error.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    host, port = sys.argv[1], int(sys.argv[2])
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, lambda: print("listening", flush=True))
    await StartAsyncTcpServer(context=context(), address=(host, port))


if __name__ == "__main__":
    asyncio.run(main())
