"""The Ray engine of `sae_core.tools.recompute`: one Ray Data task per shard, each running the local
engine's per-file function with the numba backend, so its outputs are the local engine's.

`ray.init` retries an address that does not answer as a Ray cluster for minutes, in native code
that Ctrl-C does not reach; without an address it joins the cluster the last `ray start` here
recorded, even one that has crashed since. So the address it would join is checked first, within
about half a minute: a TCP connection (`PROBE_SECONDS`), then a trial join in a child process,
killed after `JOIN_SECONDS` (something that accepts connections, a proxy or another service, is
not a cluster).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..extras import require
from .jobs import JobError

PROBE_SECONDS = 10.0
JOIN_SECONDS = 25.0
_CLIENT_PORT = 10001  # `ray://host` without a port: the Ray client server's default
_JOIN = "import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); ray.shutdown()"
NEEDED_BY = "the Ray engine (sae recompute --engine ray)"


def probe_address(address: str | None, timeout: float = PROBE_SECONDS, join_timeout: float | None = None
                  ) -> None:
    """Raise JobError (one line) unless the Ray cluster that `ray.init(address)` would join can be
    joined: a TCP connection within `timeout` seconds, then (join_timeout not 0) `ray.init` in a
    child process that must finish within `join_timeout` seconds (default JOIN_SECONDS).

    None and "auto" mean what they mean to `ray.init`: $RAY_ADDRESS, else the cluster the last
    `ray start` on this machine recorded (Ray's own record, which outlives a crashed cluster),
    else (None) a new local instance, which needs no check; "local" is always a new one.
    Without Ray installed: `sae_core.extras.MissingExtra`, one line naming the `ray` extra.
    """
    require("ray", extra="ray", needed_by=NEEDED_BY)
    label = f"--ray-address {address}"
    if address in (None, "auto"):
        address, label = _default_address()
    if not address or address in ("auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        host, port = rest, str(_CLIENT_PORT) if address.startswith("ray://") else ""
    host = host.strip("[]")
    if not host or not port:
        raise JobError(errno.EINVAL, f"{label}: expected HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise JobError(exc.errno or errno.EHOSTUNREACH, f"{label}: cannot reach the Ray cluster ({reason})") from None
    join_timeout = JOIN_SECONDS if join_timeout is None else join_timeout
    if join_timeout:
        _trial_join(address, label, join_timeout)


def _default_address() -> tuple[str | None, str]:
    """(the address `ray.init()` without one joins, how to name it in a message)."""
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, f"RAY_ADDRESS={env}"
    try:
        from ray._private.utils import read_ray_address  # where `ray start` records its cluster

        recorded = read_ray_address()
    except Exception:  # another Ray version, or no Ray: ray.init will say what it finds
        return None, ""
    return recorded, (f"the Ray cluster at {recorded}, which the last `ray start` here recorded (`ray stop` "
                      "forgets it; --ray-address local starts a new instance)")


def _trial_join(address: str, label: str, timeout: float) -> None:
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", _JOIN, address], capture_output=True, text=True, check=False,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise JobError(errno.ETIMEDOUT, f"{label}: something answers there, but joining it as a Ray cluster "
                                        f"did not finish within {timeout:g} s (not a Ray cluster, or another "
                                        "Ray version?)") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise JobError(errno.ECONNREFUSED, f"{label}: cannot join the Ray cluster: "
                                           f"{lines[-1] if lines else f'exit status {proc.returncode}'}")


def run_ray(items: Sequence[dict[str, Any]], one: Callable[[dict[str, Any]], dict[str, Any]], *,
            address: str | None) -> list[dict[str, Any]]:
    """`one(item)` for every item, one Ray Data task each (num_cpus=1), in item order. `one` must
    be picklable and return a flat dict, with the item's "index". The caller has checked `address`
    (`probe_address`); raises JobError when the cluster cannot be joined all the same, and
    `sae_core.extras.MissingExtra` without Ray Data (the `ray` extra)."""
    if not items:
        return []
    ray = require("ray", extra="ray", needed_by=NEEDED_BY)
    require("ray.data", extra="ray", needed_by=NEEDED_BY, package="ray[data]")

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JobError(errno.ECONNREFUSED, f"--ray-address {address or '(local)'}: cannot join the Ray "
                                               f"cluster: {str(exc).splitlines()[0] if str(exc) else exc}"
                           ) from None
    try:
        ds = ray.data.from_items(list(items), override_num_blocks=len(items))
        rows = ds.map(one, num_cpus=1).take_all()
    finally:
        if started:
            ray.shutdown()
    order = {item["index"]: i for i, item in enumerate(items)}
    return sorted(rows, key=lambda r: order[r["index"]])


__all__ = ["JOIN_SECONDS", "PROBE_SECONDS", "probe_address", "run_ray"]
