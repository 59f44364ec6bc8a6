"""A fast loopback HTTP/1.1 keep-alive backend for the benchmarks (asyncio Protocol, no framework).

Every request gets ``200`` with a 12-byte body. ``GET /_stats`` answers JSON counters: requests seen and how many of
them carried an ``Authorization`` header (so the harness can prove the addon really injected a token on every
request it timed). ``GET /_reset`` zeroes them.

    python bench/backend.py PORT        # prints "listening 127.0.0.1:PORT" when ready (PORT 0 = any free port)
"""

from __future__ import annotations

import asyncio
import json
import sys

BODY = b"hello bench\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
STATS = {"requests": 0, "with_authorization": 0}


def _json(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end]
            rest = self.buf[end + 4 :]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17 : j if j >= 0 else None].strip() or 0)
            if len(rest) < length:
                break
            self.buf = rest[length:]
            path = head.split(b" ", 2)[1] if b" " in head else b"/"
            if path == b"/_stats":
                out.append(_json(STATS))
                continue
            if path == b"/_reset":
                STATS["requests"] = STATS["with_authorization"] = 0
                out.append(_json(STATS))
                continue
            STATS["requests"] += 1
            if b"\r\nauthorization:" in lower:
                STATS["with_authorization"] += 1
            out.append(OK)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
    real = server.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{real}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
