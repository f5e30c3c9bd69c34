"""A throwaway Mosquitto for tests and benchmarks that must kill and restart a
broker, or load one heavily, without touching the shared one: own port, own
password file, persistence in its own folder."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

from contracts.errors import ServiceUnavailable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayBroker:
    def __init__(self, workdir: Path, username: str, password: str,
                 port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise ServiceUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        passwd = workdir / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), username, password],
                       check=True, capture_output=True)
        passwd.chmod(0o600)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
            "persistence true",
            f"persistence_location {data}/",
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            "max_keepalive 120",
            f"log_dest file {workdir / 'mosquitto.log'}",
            # Started as root, mosquitto would switch to a user that cannot read workdir.
            f"user {getpass.getuser()}",
            "",
        ]))

    def start(self, timeout: float = 10.0) -> ThrowawayBroker:
        self._process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServiceUnavailable(f"mosquitto exited with {self._process.returncode}; "
                                         f"see {self.workdir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServiceUnavailable(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> ThrowawayBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
