"""A closed-loop HTTP/1.1 load generator on asyncio streams, light enough to share two cores
with the service it loads: 0.2-0.3 ms of its own CPU per request here (it prints the figure).

    python bench/http_load.py URL_PATH --port N --clients 32 --seconds 10 \
        [--json '{"n": 1}' | --file face.jpg --field image]   # neither: GET

Each client holds one keep-alive connection and sends the same request again as soon as
the answer arrives. Prints one JSON object: requests answered 200 in the window, failures,
img/s (one image per request), p50/p99 latency, and this process's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path


def request_bytes(port: int, path: str, body: bytes | None, content_type: str = "") -> bytes:
    """A GET without a body, else a POST."""
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status of one response, its body read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).strip(), 16):
            await reader.readexactly(size + 2)
        await reader.readline()
    return status


async def load(port: int, data: bytes, clients: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    failures = answered = 0
    recording = stopping = False

    async def client() -> None:
        nonlocal failures, answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        while not stopping:
            started = time.perf_counter()
            writer.write(data)
            status = await read_response(reader)
            answered += 1
            if recording:
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
        writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(warmup)
    recording, cpu, start = True, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    recording = False
    done, wall, cpu = sorted(latencies), time.perf_counter() - start, time.process_time() - cpu
    stopping = True
    await asyncio.gather(*tasks)
    return {
        "requests": len(done),
        "failures": failures,
        "img_per_s": len(done) / wall,
        "p50_ms": 1000 * done[len(done) // 2] if done else float("nan"),
        "p99_ms": 1000 * done[min(len(done) - 1, int(len(done) * 0.99))] if done else float("nan"),
        "client_cpu_s_per_request": cpu / max(1, len(done)),
        "answered_in_all": answered,  # warm-up and wind-down included
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="e.g. /v1/sample")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--json", help="a JSON body")
    parser.add_argument("--file", type=Path, help="a file to upload as multipart")
    parser.add_argument("--field", default="image", help="the multipart field of --file")
    args = parser.parse_args()
    body, kind = None, ""
    if args.json is not None and args.file is not None:
        parser.error("give one of --json and --file (neither: GET)")
    if args.json is not None:
        body, kind = args.json.encode(), "application/json"
    elif args.file is not None:
        body, kind = multipart(args.field, args.file.name, args.file.read_bytes())
    data = request_bytes(args.port, args.path, body, kind)
    print(json.dumps(asyncio.run(load(args.port, data, args.clients, args.seconds, args.warmup))))


if __name__ == "__main__":
    main()
