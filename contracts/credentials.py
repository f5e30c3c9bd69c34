"""MQTT credentials generated at set-up, never committed.

    python -m contracts.credentials init --out DIR --devices N [--tls-hosts H,...]

writes into DIR (mode 0700), keeping whatever is already there (idempotent;
`--devices` only ever adds accounts):

- `{bridge,worker,api,gateway}.password`: one random password per service account;
- `devices.csv`: `device_id,password`, one line per simulated device account
  (the device id is the MQTT user name, which the ACL ties to its topics);
- `mosquitto_users`: `user:password` lines of all of them, which the broker's
  start script hashes into its password file with `mosquitto_passwd -U`
  (together with the operator account from MQTT_USERNAME / MQTT_PASSWORD);
- `tls/`: a local CA and a server certificate for the broker's TLS listener
  (`openssl`), when `--tls-hosts` names the host names clients will use.

Simulators share one `devices.csv` through `claim_devices`: every process
claims as many slots as it runs devices by creating `devices.csv.claims/<id>`
with O_CREAT|O_EXCL, so `docker compose up --scale sensor=N` replicas end up
with distinct accounts without talking to each other.

Standard library only: local_stack runs this with the system Python, before
`.venv` exists.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_ACCOUNTS = ("bridge", "worker", "api", "gateway")
DEVICES_FILE = "devices.csv"
USERS_FILE = "mosquitto_users"
TLS_DIR = "tls"
TLS_DAYS = 825  # the longest validity current TLS clients accept for a server certificate
_FORBIDDEN_IN_ID = set("/+#:,\x00 \t\r\n")


class CredentialsError(Exception):
    """Bad credentials set-up (no free device slot, unreadable file, bad name).
    Kept free of contracts.errors so this module imports with the standard
    library alone; callers in the services re-raise it as ConfigError."""


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    devices: int = 0

    def summary(self) -> str:
        made = ", ".join(self.created) if self.created else "nothing new"
        return f"{self.devices} device accounts; created: {made}"


def _write_private(path: Path, text: str) -> None:
    """Write `text` readable by the owner only, atomically (tmp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def check_device_prefix(prefix: str) -> str:
    if not prefix or prefix.startswith("$") or _FORBIDDEN_IN_ID & set(prefix):
        raise CredentialsError(
            f"device prefix {prefix!r} must be non-empty, not start with $ and hold no "
            "'/ + # : ,', spaces or NUL (it becomes an MQTT user name and topic level)")
    return prefix


def new_password() -> str:
    # token_urlsafe: no ':' (the passwd file's separator) and shell-safe.
    return secrets.token_urlsafe(24)


def read_devices(path: Path) -> list[tuple[str, str]]:
    """The (device_id, password) pairs of a devices file, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsError(f"cannot read device credentials {path}: {exc}") from exc
    pairs = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or row[0].startswith("#"):
            continue
        if len(row) != 2 or not row[0] or not row[1]:
            raise CredentialsError(f"{path}:{lineno}: expected device_id,password")
        pairs.append((row[0], row[1]))
    return pairs


def init(out: Path, devices: int, device_prefix: str = "device",
         tls_hosts: list[str] | None = None) -> InitReport:
    """Create what is missing in `out`; never changes an existing password."""
    check_device_prefix(device_prefix)
    if devices < 0:
        raise CredentialsError("--devices must be >= 0")
    report = InitReport()
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    services: dict[str, str] = {}
    for name in SERVICE_ACCOUNTS:
        path = out / f"{name}.password"
        if not path.exists():
            _write_private(path, new_password() + "\n")
            report.created.append(path.name)
        services[name] = path.read_text(encoding="utf-8").strip()
    devices_path = out / DEVICES_FILE
    pairs = read_devices(devices_path) if devices_path.exists() else []
    taken = {device_id for device_id, _ in pairs}
    index = 0
    while len(pairs) < devices:
        device_id = f"{device_prefix}-{index}"
        index += 1
        if device_id not in taken:
            pairs.append((device_id, new_password()))
            taken.add(device_id)
            report.created.append(device_id)
    clash = taken & set(services)
    if clash:
        raise CredentialsError(f"device ids {sorted(clash)} clash with service accounts")
    _write_private(devices_path, "".join(f"{d},{p}\n" for d, p in pairs))
    users = [*services.items(), *pairs]
    _write_private(out / USERS_FILE, "".join(f"{u}:{p}\n" for u, p in users))
    report.devices = len(pairs)
    if tls_hosts and not (out / TLS_DIR / "server.crt").exists():
        make_tls(out / TLS_DIR, tls_hosts)
        report.created.append(f"{TLS_DIR}/ (CA and server certificate)")
    return report


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CredentialsError("openssl is needed to make the TLS certificates") from exc
    except subprocess.CalledProcessError as exc:
        raise CredentialsError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc


def make_tls(tls: Path, hosts: list[str]) -> None:
    """A local CA and a server certificate for `hosts` (DNS names or IPs),
    for local use only: clients trust `ca.crt` via MQTT_CA_FILE."""
    tls.mkdir(parents=True, exist_ok=True)
    tls.chmod(0o700)
    ca_key, ca_crt = tls / "ca.key", tls / "ca.crt"
    key, csr, crt = tls / "server.key", tls / "server.csr", tls / "server.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(TLS_DAYS),
             "-subj", "/CN=edgepipe local CA", "-keyout", str(ca_key), "-out", str(ca_crt),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
             "-keyout", str(key), "-out", str(csr))
    sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    ext = tls / "server.ext"
    ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n", encoding="utf-8")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", str(TLS_DAYS), "-extfile", str(ext), "-out", str(crt))
    for path in (csr, ext):
        path.unlink(missing_ok=True)
    for path in (ca_key, key):
        path.chmod(0o600)


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            continue
    return False


# --- claiming device slots (simulators) ---

def claims_dir(devices_file: Path) -> Path:
    return devices_file.with_name(devices_file.name + ".claims")


def default_owner() -> str:
    """host:pid. A restarted container keeps its host name and (as PID 1) its
    pid, so it gets its own slots back; a dead local process's slots are taken
    over because its pid is gone."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _stale(owner: str, me: str) -> bool:
    """A claim by a process on this host that no longer runs."""
    host, _, pid = owner.rpartition(":")
    if host != me.rpartition(":")[0] or owner == me or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_devices(devices_file: Path, count: int,
                  owner: str | None = None) -> list[tuple[str, str]]:
    """Claim `count` device accounts for `owner` (default: this process): first
    those it already holds, then free ones. Raises CredentialsError, holding
    nothing, when too few are free."""
    me = owner or default_owner()
    pairs = read_devices(devices_file)
    folder = claims_dir(devices_file)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise CredentialsError(f"cannot create {folder}: {exc}") from exc
    mine: list[tuple[str, str]] = []
    free: list[tuple[str, str]] = []
    for pair in pairs:
        path = folder / pair[0]
        try:
            holder = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            free.append(pair)
            continue
        if holder == me:
            mine.append(pair)
        elif _stale(holder, me):
            path.unlink(missing_ok=True)
            free.append(pair)
    claimed = mine[:count]
    for pair in free:
        if len(claimed) >= count:
            break
        try:
            fd = os.open(folder / pair[0], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica was faster
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(me + "\n")
        claimed.append(pair)
    if len(claimed) < count:
        release_devices(devices_file, [d for d, _ in claimed], me)
        raise CredentialsError(
            f"{devices_file} has {len(pairs)} device accounts and only {len(claimed)} free "
            f"for {count} devices; create more with `python -m contracts.credentials init "
            f"--out {devices_file.parent} --devices N` (and restart Mosquitto, or send it "
            f"SIGHUP, so it reads them), or free stale claims in {folder}")
    return claimed


def release_devices(devices_file: Path, device_ids: list[str], owner: str | None = None) -> None:
    """Give back the slots `owner` holds among `device_ids`."""
    me = owner or default_owner()
    folder = claims_dir(devices_file)
    for device_id in device_ids:
        path = folder / device_id
        try:
            if path.read_text(encoding="utf-8").strip() == me:
                path.unlink()
        except FileNotFoundError:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contracts.credentials",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the missing credentials (idempotent)")
    p_init.add_argument("--out", type=Path, required=True, help="secrets folder")
    p_init.add_argument("--devices", type=int, default=10,
                        help="at least this many device accounts (default %(default)s)")
    p_init.add_argument("--device-prefix", default="device",
                        help="device ids are PREFIX-0, PREFIX-1, ... (default %(default)s)")
    p_init.add_argument("--tls-hosts", default="",
                        help="comma-separated host names/IPs for a local CA and server "
                             "certificate in OUT/tls (default: none made)")
    args = parser.parse_args(argv)
    hosts = [h.strip() for h in args.tls_hosts.split(",") if h.strip()]
    try:
        report = init(args.out, args.devices, args.device_prefix, hosts or None)
    except CredentialsError as exc:
        print(f"credentials: {exc}", file=sys.stderr)
        return 2
    print(f"credentials: {args.out}: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
