"""A lean QoS 1 MQTT load generator for the bridge bench (not the system under test).

Everything in the bench shares the machine's cores, so CPU the publishers burn
is taken from Mosquitto, Kafka and the bridge. `mosquitto_pub -l` spends about
6 µs of CPU per message (line reading, its library's per-message state); this
publisher encodes every PUBLISH packet before the clock starts, then writes
them raw on the socket in large slices, keeping at most `window` messages
unacknowledged, and reads the broker's PUBACKs in bulk, checking only that
they are well-formed PUBACKs. It is still real MQTT 3.1.1 (CONNECT, QoS 1
PUBLISH, PUBACK, DISCONNECT) against the real Mosquitto; the broker's PUBACK to
us is independent of the bridge, which still holds its own acks until Kafka
has the records.

Run as a subprocess by bench_bridge (`python -m bench.mqtt_load ...`): it
connects, encodes, prints `ready`, waits for a line on stdin, publishes, and
prints one JSON line with the messages acked, the seconds and the CPU seconds
it used while publishing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson

from contracts.settings import Settings

CONNACK = 0x20
PUBLISH_QOS1 = 0x32
PUBACK = 0x40
DISCONNECT = b"\xe0\x00"
_U16 = struct.Struct("!H")


class LoadError(RuntimeError):
    """The broker refused us or answered something other than PUBACKs."""


def remaining_length(size: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    out = bytearray()
    while True:
        size, byte = divmod(size, 128)
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return _U16.pack(len(data)) + data


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, with username and password."""
    body = (_string("MQTT") + bytes([4, 0xC2]) + _U16.pack(keepalive)
            + _string(client_id) + _string(username) + _string(password))
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH (no DUP, no retain)."""
    size = 2 + len(topic) + 2 + len(payload)
    return (bytes([PUBLISH_QOS1]) + remaining_length(size) + _U16.pack(len(topic)) + topic
            + _U16.pack(mid) + payload)


def reading_payloads(count: int, offset: int, base: float) -> list[bytes]:
    """The bench's readings: distinct `ts` and `seq` per message."""
    return [orjson.dumps({"ts": base + (offset + i) * 1e-6, "value": float(i),
                          "seq": offset + i}) for i in range(count)]


def encode_all(topic: str, payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """Every PUBLISH back to back, and the offset where each one starts (plus
    the end). Message ids cycle through 1..65535; the window keeps fewer than
    that in flight, so an id is never reused while still unacknowledged."""
    topic_bytes = topic.encode()
    packets = [publish_packet(topic_bytes, i % 65_535 + 1, p) for i, p in enumerate(payloads)]
    offsets = [0]
    for packet in packets:
        offsets.append(offsets[-1] + len(packet))
    return b"".join(packets), offsets


def open_session(host: str, port: int, client_id: str, username: str,
                 password: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(client_id, username, password))
    answer = b""
    while len(answer) < 4:
        chunk = sock.recv(4 - len(answer))
        if not chunk:
            raise LoadError("broker closed the connection before CONNACK")
        answer += chunk
    if answer[0] != CONNACK or answer[3] != 0:
        raise LoadError(f"CONNACK refused: {answer.hex()}")
    return sock


def publish_all(sock: socket.socket, stream: bytes, offsets: list[int], window: int,
                slice_messages: int = 256) -> int:
    """Writes the encoded stream, at most `window` messages unacknowledged,
    and returns how many PUBACKs came back (all of them, or LoadError)."""
    total = len(offsets) - 1
    slice_messages = min(slice_messages, window)
    view = memoryview(stream)
    sent = acked = 0
    pending = b""
    lowat = 1
    while acked < total:
        room = min(window - (sent - acked), total - sent, slice_messages)
        # Write when a full slice fits (or the tail): fewer, larger writes.
        if room > 0 and (room == slice_messages or sent + room == total):
            sock.sendall(view[offsets[sent]:offsets[sent + room]])
            sent += room
            continue
        # Sleep until the PUBACKs that make room for the next write are all
        # there (SO_RCVLOWAT), rather than waking for each 4-byte PUBACK.
        needed = total - acked if sent == total else (sent - acked) - (window - slice_messages)
        want = max(1, needed * 4 - len(pending))
        if want != lowat:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            lowat = want
        count, pending = read_pubacks(sock, pending, acked)
        acked += count
    return acked


def read_pubacks(sock: socket.socket, pending: bytes, acked: int,
                 flags: int = 0) -> tuple[int, bytes]:
    """One `recv`: the PUBACKs it completes and the bytes of a cut-off one
    (`acked` only words the error when the broker closed the connection)."""
    data = sock.recv(65_536, flags)
    if not data:
        raise LoadError(f"broker closed the connection after {acked} PUBACKs")
    return count_pubacks(pending + data)


def count_pubacks(received: bytes) -> tuple[int, bytes]:
    """How many whole PUBACKs `received` holds, and the bytes of a cut-off
    one. Every frame must be 40 02 <mid>: checked in bulk, not per message."""
    whole = len(received) - len(received) % 4
    frames, rest = received[:whole], received[whole:]
    count = whole // 4
    if frames[0::4] != bytes([PUBACK]) * count or frames[1::4] != b"\x02" * count:
        raise LoadError(f"expected PUBACKs, got {frames[:16].hex()}...")
    return count, rest


def publish_paced(sock: socket.socket, topic: str, count: int, rate: float) -> int:
    """`count` readings at `rate` per second for the latency phase. Each is
    encoded when its turn comes, with `ts` the wall clock at that moment, so
    publish-to-Kafka latency is measured from the real publish time; PUBACKs
    are collected without waiting in between."""
    if count > 60_000:
        raise LoadError("paced runs keep every message id in flight: at most 60,000")
    topic_bytes = topic.encode()
    interval = 1.0 / rate
    acked, pending = 0, b""
    start = time.perf_counter()
    for i in range(count):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            time.sleep(min(0.001, target - now))
        payload = orjson.dumps({"ts": time.time(), "value": 1.0, "seq": i})
        sock.sendall(publish_packet(topic_bytes, i % 65_535 + 1, payload))
        try:
            done, pending = read_pubacks(sock, pending, acked, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        acked += done
    while acked < count:
        done, pending = read_pubacks(sock, pending, acked)
        acked += done
    return acked


class LeanPublishers:
    """The parent's side: one publisher process per topic, connected and with
    its packets encoded before `go()`, so the clock and the CPU meter cover
    publishing only."""

    def __init__(self, settings: Settings, topics: list[str], count: int,
                 window: int = 1000, rate: float = 0.0) -> None:
        auth = ["--host", settings.mqtt_host, "--port", str(settings.mqtt_port),
                "--username", settings.mqtt_username]
        self.procs = []
        for i, topic in enumerate(topics):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.mqtt_load", *auth, "--topic", topic,
                 "--client-id", f"bench-load-{os.getpid()}-{i}-{time.monotonic_ns()}",
                 "--count", str(count), "--offset", str(i * count), "--window", str(window),
                 "--rate", str(rate)],
                cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
            assert proc.stdin is not None
            proc.stdin.write(settings.mqtt_password.get_secret_value() + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                self.kill()
                raise LoadError(f"publisher did not start: {line!r}")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def results(self, timeout: float = 60) -> dict[str, float]:
        """Waits for every publisher: messages acked by the broker, CPU seconds."""
        acked, cpu = 0, 0.0
        for proc in self.procs:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise LoadError(f"publisher exited with {proc.returncode}")
            result = json.loads(out.strip().splitlines()[-1])
            acked += result["acked"]
            cpu += result["cpu_s"]
        return {"acked": acked, "cpu_s": round(cpu, 3)}

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def mosquitto_pub(settings: Settings, topics: list[str], count: int,
                  tmp: Path) -> list[subprocess.Popen[bytes]]:
    """The old load generator, kept for comparison (`bench_bridge --load c`):
    one `mosquitto_pub -l` per topic reading the same readings from a file."""
    auth = ["-h", settings.mqtt_host, "-p", str(settings.mqtt_port), "-u",
            settings.mqtt_username, "-P", settings.mqtt_password.get_secret_value()]
    procs = []
    for i, topic in enumerate(topics):
        path = tmp / f"load-{i}-{time.monotonic_ns()}.jsonl"
        path.write_bytes(b"".join(p + b"\n" for p in reading_payloads(count, i * count,
                                                                      time.time())))
        with path.open("rb") as lines:
            procs.append(subprocess.Popen(["mosquitto_pub", *auth, "-q", "1", "-l",
                                           "-t", topic], stdin=lines))
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--slice", type=int, default=256, help="messages per write")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="paced: this many messages per second, each stamped when sent")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")  # not on the command line (ps shows it)
    if not args.rate:
        stream, offsets = encode_all(args.topic, reading_payloads(args.count, args.offset,
                                                                  time.time()))
    sock = open_session(args.host, args.port, args.client_id, args.username, password)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    cpu, started = time.process_time(), time.monotonic()
    if args.rate:
        acked = publish_paced(sock, args.topic, args.count, args.rate)
    else:
        acked = publish_all(sock, stream, offsets, args.window, args.slice)
    sock.sendall(DISCONNECT)
    sock.close()
    print(json.dumps({"acked": acked, "seconds": round(time.monotonic() - started, 3),
                      "cpu_s": round(time.process_time() - cpu, 3)}), flush=True)


if __name__ == "__main__":
    main()
