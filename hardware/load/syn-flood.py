#!/usr/bin/python3
"""A bounded TCP SYN flood for closed test sites: bare SYNs from source ports 1024-65535 in a
scrambled order (none repeats within 64512 SYNs) and random sequence numbers, to ONE address and port, through a raw socket (the kernel writes the IPv4 header; this
writes the TCP header and its checksum, RFC 793 3.1 / RFC 9293 3.1). Never completes a handshake.

usage: syn-flood.py ADDRESS PORT [--count N] [--seconds S] [--rate PPS]

  --count    most SYNs to send (default 100000, at most 200000)
  --seconds  most time to send for (default 10, at most 10)
  --rate     SYNs per second at most (default 0: as fast as one CPU goes)

Prints one JSON line when done: {"sent": N, "seconds": S, "errors": N, "source": "a.b.c.d"}.

It refuses to run outside a namespace made by `ip netns add`, and takes only an
IPv4 address in a private range (RFC 1918): it is for namespaces a test created, nothing else.
"""
import argparse
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time

MAX_COUNT = 200_000
MAX_SECONDS = 10.0
PORTS = 64512
STRIDE = 40507


def fail(message: str) -> None:
    print(f"syn-flood: {message}", file=sys.stderr)
    sys.exit(2)


def named_netns() -> bool:
    """True when this process runs in a namespace made by `ip netns add` (one under /run/netns)."""
    try:
        mine = os.stat("/proc/self/ns/net")
        for name in os.listdir("/run/netns"):
            st = os.stat(os.path.join("/run/netns", name))
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return True
    except OSError:
        pass
    return False


def source_for(dst: str, port: int) -> str:
    # A connected UDP socket sends nothing; it only makes the kernel pick the route's source.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((dst, port))
        return s.getsockname()[0]
    finally:
        s.close()


def fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description="bounded SYN flood to one namespace address")
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=0)
    a = p.parse_args()

    try:
        dst = ipaddress.IPv4Address(a.address)
    except ValueError:
        fail(f"{a.address} is not an IPv4 address")
    if not dst.is_private or dst.is_loopback or dst.is_unspecified:
        fail(f"{dst} is not a private (RFC 1918) address: this tool floods only test namespaces")
    if not 1 <= a.port <= 65535:
        fail(f"port {a.port} is not 1-65535")
    if not named_netns():
        fail("this is not a named network namespace: run it inside a test namespace (ip netns exec)")
    count = max(0, min(a.count, MAX_COUNT))
    seconds = max(0.0, min(a.seconds, MAX_SECONDS))

    src = source_for(str(dst), a.port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    # A full socket buffer blocks for a moment rather than losing the count.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    # The checksum covers the pseudo-header (source, destination, protocol, TCP length) and the
    # header (RFC 9293 3.1). Everything but the source port and the sequence number is the same
    # for every SYN, so its one's-complement sum is taken once and those two added per packet.
    pseudo = socket.inet_aton(src) + socket.inet_aton(str(dst)) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    # data offset 5 words, flags SYN, window 64240, checksum 0 for the sum, no urgent pointer
    fixed = struct.pack("!HHIIBBHHH", 0, a.port, 0, 0, 5 << 4, 0x02, 64240, 0, 0)
    base = sum(struct.unpack("!16H", pseudo + fixed))
    pack = struct.Struct("!HHIIBBHHH").pack
    rand = random.getrandbits
    dst_tuple = (str(dst), 0)

    port_at = random.randrange(PORTS)
    sent = 0
    errors = 0
    start = time.monotonic()
    deadline = start + seconds
    batch = 256
    while sent < count:
        now = time.monotonic()
        if now >= deadline:
            break
        room = count - sent
        if a.rate > 0:
            room = min(room, int((now - start) * a.rate) + 1 - sent)
            if room <= 0:
                time.sleep(min(0.002, deadline - now))
                continue
        for _ in range(min(batch, room)):
            # A stride coprime to 64512 (2^10 x 3^2 x 7) visits every port once before any repeats:
            # each SYN is a new connection to conntrack and to the listener, not a retransmission.
            port_at = (port_at + STRIDE) % PORTS
            sport = 1024 + port_at
            seq = rand(32)
            checksum = 0xFFFF - fold(base + sport + (seq >> 16) + (seq & 0xFFFF))
            try:
                sock.sendto(pack(sport, a.port, seq, 0, 5 << 4, 0x02, 64240, checksum, 0), dst_tuple)
                sent += 1
            except OSError:
                errors += 1
                if errors > 1000:
                    break
        if errors > 1000:
            break
    sock.close()
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3), "errors": errors, "source": src}), flush=True)


if __name__ == "__main__":
    main()
