"""Process groups for tests that spawn gloo processes themselves (not a test module).

Why not ``tcp://127.0.0.1:<free port>``: a port picked by binding port 0 and closing it is
free only at that instant. Until rank 0's TCPStore binds it, another process may take it, or
another test run on the same machine (pytest in a second worktree, a benchmark) may pick the
same port and start its own store there. Then rank 1 can join a foreign rendezvous, and rank
0's process, which hosts the store, takes it down when it exits, whatever rank 1 is still
doing. A FileStore in the test's own temporary folder has no port, and no rank hosts it.

Teardown: a barrier first, so that neither rank closes its gloo pairs while the other still
has one in flight, then ``destroy_process_group``, which shuts the backend's threads down
before the interpreter exits.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch.distributed as tdist

# generous: 2 processes on a loaded 2-core machine; a hang still ends well before CI's limit
TIMEOUT = timedelta(minutes=5)


def rendezvous_file(folder: str | Path) -> str:
    """A fresh rendezvous file path in ``folder`` (which must be private to one spawn)."""
    path = Path(folder) / "gloo-rendezvous"
    if path.exists():
        raise FileExistsError(f"{path} exists: a FileStore must start from a fresh file")
    return str(path)


def init_gloo(rank: int, world: int, rendezvous: str) -> None:
    """Join the gloo group of ``world`` processes through the FileStore at ``rendezvous``."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    tdist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                             world_size=world, timeout=TIMEOUT)


def close_gloo() -> None:
    """Leave the group in step with the other ranks (barrier), then shut it down."""
    if not tdist.is_initialized():
        return
    try:
        tdist.barrier()
    finally:
        tdist.destroy_process_group()
