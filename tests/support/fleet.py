"""Several gateway hosts behind a real load balancer, as docs/scaling.md lays them out.

Each host is a real ``imagerelay serve`` process with a data directory of its own (as a
separate machine would have): they share only what the docs say they share — one
PostgreSQL database, one Redis prefix, the catalog and the settings that must match
(URL signing key, secret key, webhook key, admin token). In front, nginx from Debian, started with
``balancer_config``: the timeouts and body limits docs/operations.md recommends, so
the rehearsal runs the configuration operators are told to run.

The balancer adds one header of its own, ``X-Served-By`` (the upstream address that
answered), so a test can tell which host served each call that went through it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.gateway import Gateway, free_port, launch_gateway, stop_gateway, wait_until_serving
from tests.support.services import require_program

SERVED_BY = "x-served-by"


def balancer_config(port: int, hosts: Sequence[str], run_dir: Path) -> str:
    """nginx.conf for ``hosts`` (``127.0.0.1:PORT``) behind ``127.0.0.1:port``.

    The ``upstream`` and ``server`` blocks are docs/scaling.md's ("The load balancer"),
    minus TLS and the per-client limits (every call of the test comes from one address),
    plus the ``X-Served-By`` header. Paths nginx writes go to ``run_dir``. Keep the two
    in step: the docs call this configuration the tested one.
    """
    servers = "\n".join(f"        server {h} max_fails=1 fail_timeout=10s;" for h in hosts)
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{ worker_connections 2048; }}

http {{
    log_format upstreams '$remote_addr "$request" $status $body_bytes_sent upstream=$upstream_addr '
                         'upstream_status=$upstream_status rt=$request_time';
    access_log {run_dir}/access.log upstreams;
    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;

    upstream imagerelay {{
{servers}
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};

        client_header_timeout 10s;
        client_body_timeout   30s;
        client_max_body_size  1100m;

        location / {{
            proxy_pass http://imagerelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 5s;
            proxy_read_timeout 310s;
            proxy_send_timeout 310s;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            add_header X-Served-By $upstream_addr always;
        }}
    }}
}}
"""


@dataclass
class Balancer:
    base_url: str
    process: subprocess.Popen[bytes]
    run_dir: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def error_log(self) -> str:
        path = self.run_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def run_balancer(port: int, hosts: Sequence[str], run_dir: Path) -> Iterator[Balancer]:
    """nginx in the foreground on ``port``, balancing over ``hosts``; stopped afterwards."""
    nginx = require_program("nginx", "/usr/sbin/nginx")
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(balancer_config(port, hosts, run_dir))
    check = subprocess.run(
        [nginx, "-t", "-q", "-e", str(run_dir / "error.log"), "-p", str(run_dir), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}")
    with open(run_dir / "nginx.out", "wb") as out:
        proc = subprocess.Popen(
            [nginx, "-e", str(run_dir / "error.log"), "-p", str(run_dir), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    balancer = Balancer(f"http://127.0.0.1:{port}", proc, run_dir)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {proc.returncode}:\n{balancer.error_log()}")
            try:
                httpx.get(balancer.base_url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{balancer.error_log()}")
            time.sleep(0.05)
        yield balancer
    finally:
        proc.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def binding_permissions() -> list[str]:
    """A command prefix under which file permissions bind the process even as root (as
    they bind an unprivileged service user): setpriv drops the capabilities that override
    them. Nothing is needed when the tests do not run as root."""
    if os.geteuid() != 0:
        return []
    setpriv = require_program("setpriv", "/usr/bin/setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def set_read_only(path: Path, read_only: bool) -> None:
    """Take write permission away from a data directory and everything in it (or give it
    back): a host whose calls touched its own disk would then fail them."""
    for item in [path, *path.rglob("*")]:
        if item.is_symlink():
            continue
        mode = item.stat().st_mode & 0o7777
        item.chmod(mode & ~0o222 if read_only else mode | 0o200)


@dataclass
class Fleet:
    hosts: list[Gateway]
    balancer: Balancer
    env: dict[str, str]  # the settings every host shares
    root: Path
    read_only: bool = False  # the hosts' data directories, once they serve
    stopped: set[int] = field(default_factory=set)

    def address(self, index: int) -> str:
        return self.hosts[index].base_url.removeprefix("http://")

    def served_by(self, response: httpx.Response) -> int:
        """Which host answered a call that went through the balancer."""
        addresses = [a.strip() for a in response.headers[SERVED_BY].split(",")]
        return next(i for i in range(len(self.hosts)) if self.address(i) == addresses[-1])

    def live(self) -> list[int]:
        return [i for i in range(len(self.hosts)) if i not in self.stopped]

    def kill(self, index: int) -> None:
        """SIGKILL, as a machine losing power: no shutdown code runs."""
        self.hosts[index].process.kill()
        self.hosts[index].process.wait()
        self.stopped.add(index)

    def stop(self, index: int) -> None:
        stop_gateway(self.hosts[index])
        self.stopped.add(index)

    def wait_balanced(self, timeout_s: float = 30.0) -> None:
        """Until the balancer sends calls to every live host again (nginx leaves a host
        that refused a connection alone for fail_timeout)."""
        deadline = time.monotonic() + timeout_s
        seen: set[int] = set()
        while set(self.live()) - seen:
            assert time.monotonic() < deadline, f"the balancer never sent to hosts {set(self.live()) - seen}"
            with suppress(httpx.HTTPError, KeyError, StopIteration):
                seen.add(self.served_by(httpx.get(self.balancer.base_url + "/healthz", timeout=5)))
            time.sleep(0.05)

    def restart(self, index: int, extra_env: dict[str, str] | None = None) -> Gateway:
        """Start host ``index`` again on its port and data directory."""
        old = self.hosts[index]
        stop_gateway(old)
        port = int(old.base_url.rsplit(":", 1)[1])
        set_read_only(old.data_dir, False)  # a start writes its lock file there
        gw = launch_gateway(
            old.data_dir, extra_env={**self.env, **(extra_env or {})}, port=port, wrapper=binding_permissions()
        )
        wait_until_serving(gw, timeout_s=180)
        if self.read_only:
            set_read_only(gw.data_dir, True)
        self.hosts[index] = gw
        self.stopped.discard(index)
        return gw


def shared_settings(database_url: str, redis_url: str, redis_prefix: str, public_base_url: str) -> dict[str, str]:
    """The settings that must match on every host (docs/scaling.md), freshly generated."""
    from cryptography.fernet import Fernet

    return {
        "IMAGERELAY_DATABASE_URL": database_url,
        "IMAGERELAY_REDIS_URL": redis_url,
        "IMAGERELAY_REDIS_PREFIX": redis_prefix,
        "IMAGERELAY_SECRET_KEY": Fernet.generate_key().decode(),
        "IMAGERELAY_URL_SIGNING_KEY": secrets.token_hex(32),
        "IMAGERELAY_WEBHOOK_KEY": secrets.token_hex(32),
        "IMAGERELAY_ADMIN_TOKEN": "fleet-admin-" + secrets.token_hex(8),
        "IMAGERELAY_PUBLIC_BASE_URL": public_base_url,
    }


@contextmanager
def run_fleet(
    root: Path, env: dict[str, str], *, size: int = 3, balancer_port: int | None = None, read_only: bool = False
) -> Iterator[Fleet]:
    """``size`` hosts with separate data directories, all started at once (a fleet
    coming up together on one database), behind nginx on ``balancer_port``. With
    ``read_only``, each data directory is made read-only once its host serves: what a
    call needs must then live in the shared services."""
    require_program("nginx", "/usr/sbin/nginx")
    balancer_port = balancer_port or free_port()
    hosts: list[Gateway] = []
    try:
        for i in range(size):
            data = root / f"host-{i}"
            data.mkdir(parents=True)
            hosts.append(launch_gateway(data, extra_env=env, wrapper=binding_permissions()))
        errors: list[BaseException] = []

        def wait(gw: Gateway) -> None:
            try:
                wait_until_serving(gw, timeout_s=180)
            except BaseException as exc:  # noqa: BLE001 - reported below, with the host's log
                errors.append(exc)

        threads = [threading.Thread(target=wait, args=(gw,)) for gw in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if read_only:
            for gw in hosts:
                set_read_only(gw.data_dir, True)
        addresses = [gw.base_url.removeprefix("http://") for gw in hosts]
        with run_balancer(balancer_port, addresses, root / "balancer") as balancer:
            fleet = Fleet(hosts, balancer, env, root, read_only)
            yield fleet
    finally:
        for gw in hosts:
            stop_gateway(gw)
            set_read_only(gw.data_dir, False)  # for pytest's clean-up of old temp dirs
