"""``ship`` under ``torchrun``: rank 0 runs the pipeline, and the other ranks follow it into each training run.

Every choice ship makes reads rank 0's clock (plans, deadlines, speeds), so the other ranks do not run the pipeline:
they wait for rank 0 to announce a training run (its ``TrainConfig``, broadcast over the process group that torchrun
set up), run it with rank 0, and wait for the next. Inside a run they compute their share of each cache pass
(``transfer``: chunks written to the run folder, which every rank must see) and train as DDP ranks; a cached tail
then trains on rank 0 alone. Rank 0 alone measures the candidates, exports, gates and writes the run folder; its own
trunk passes (the data-health checks, the learning curve) run ``transfer.alone``.

Nothing here schedules or watches processes: torchrun starts the ranks and, when one fails, ends the others. Rank 0
then saves the run's state as on Ctrl-C, and the same ``torchrun`` command resumes it, with the cache chunks already
written.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist

from mobiforge import engine
from mobiforge.callbacks import Callbacks
from mobiforge.config import ShipConfig
from mobiforge.progress import Reporter, SilentReporter
from mobiforge.runs import TrainResult
from mobiforge.ship.config import ShipInterrupted
from mobiforge.train import TrainConfig, train
from mobiforge.transfer import alone

# The other ranks wait in a broadcast while rank 0 works alone (searching, exporting, gating): the process group's
# timeout must outlast that, or they would give up on a healthy run. torchrun ends them at once when rank 0 fails.
WAIT_MARGIN_S = 3600.0


def world_size() -> int:
    """The ranks torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(config: ShipConfig) -> int:
    """Join torchrun's process group and return this process's rank. gloo: ship's own messages and the cache pass's
    barriers are CPU tensors, and DDP over gloo takes a GPU's too (NCCL, faster between GPUs, has not been tried on
    one here)."""
    if world_size() <= 1:
        return 0
    engine.join_process_group("gloo", datetime.timedelta(seconds=2 * config.time_budget_s + WAIT_MARGIN_S))
    _PEERS[:] = [None] * dist.get_world_size()
    dist.all_gather_object(_PEERS, (socket.gethostname(), os.getpid()))
    return dist.get_rank()


_PEERS: list[tuple[str, int] | None] = []  # each rank's host and process, for naming the one that died


def _gone() -> list[int]:
    """The ranks on this host whose process has ended (torchrun has reaped it by the time it stops the others)."""
    host = socket.gethostname()
    return [rank for rank, peer in enumerate(_PEERS) if peer and peer[0] == host and not _alive(peer[1])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: some process holds the number
        pass
    return True


def follow() -> None:
    """A rank other than 0: run each training run rank 0 announces, until it announces the end. Stopped (Ctrl-C, or
    torchrun ending the ranks), it ends quietly: rank 0 says what happened."""
    with contextlib.suppress(KeyboardInterrupt), _threads(_threads_per_rank()):
        while (config := _announced(None)) is not None:
            train(config, SilentReporter())


@contextlib.contextmanager
def leading() -> Iterator[None]:
    """Rank 0's pipeline: its trunk passes run alone unless inside ``train_together``, on the node's every core
    (torchrun gives each rank one thread, and the others idle meanwhile); the other ranks are let go when it ends.
    (When it fails, it exits and torchrun ends them: they may be inside a run, where an announcement would not reach
    them.)"""
    if not dist.is_initialized():
        yield
        return
    with alone(), _threads(os.cpu_count() or 1):
        try:
            yield
        except (KeyboardInterrupt, dist.DistError):  # the latter: a rank gone mid-collective, before torchrun acts
            raise ShipInterrupted(_why_stopped()) from None
    _announced(None)


def _why_stopped() -> str:
    gone = _gone()
    who = (
        f"rank {', '.join(map(str, gone))} ended, and torchrun stopped the others"
        if gone
        else "Ctrl-C, or torchrun stopped the ranks when one failed (its summary names it)"
    )
    return f"stopped: {who}; the finished stages and the cache chunks written are saved: run the same command to resume"


def train_together(config: TrainConfig, reporter: Reporter, callbacks: Callbacks | None = None) -> TrainResult:
    """``train`` with every rank (a single process: ``train`` itself). Only rank 0's callbacks steer the run: the
    others take its epoch plan after each epoch (``Trainer``)."""
    if not dist.is_initialized():
        return train(config, reporter, callbacks)
    _announced(config)
    with alone(shared=True), _threads(_threads_per_rank()):
        return train(config, reporter, callbacks)


def _threads_per_rank() -> int:
    """Torchrun's share of the node's cores for each of its ranks there."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _announced(config: TrainConfig | None) -> TrainConfig | None:
    """Rank 0's ``config`` on every rank."""
    message = [config]
    dist.broadcast_object_list(message, src=0)
    return message[0]
