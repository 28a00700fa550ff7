"""Data parallelism: process-group set-up, the few collectives lbfood uses, and the local launcher.

Single-process runs use `DistInfo()` (rank 0 of 1) and never touch `torch.distributed`. Under torchrun
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) each process calls `init_from_env`: NCCL on CUDA
(rank r on cuda:LOCAL_RANK), gloo on the CPU, with a timeout (`LBFOOD_DIST_TIMEOUT`, 300 s) so that a
process that died or stalled makes the others fail with `DistributedError` instead of hanging.
`launch_local` is what `--devices N` runs: torchrun's agent, started in-process, N copies of the command.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch

from lbfood.engine.errors import ConfigError, DistributedError

TIMEOUT_ENV = "LBFOOD_DIST_TIMEOUT"  # seconds a collective may wait for the other processes
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> DistInfo:
    """Rank facts from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE={world} but RANK is not set; start data-parallel runs with torchrun "
                          "or --devices N")
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def timeout_s(explicit: float | None = None) -> float:
    """The collective timeout: `explicit`, else $LBFOOD_DIST_TIMEOUT, else 300 s."""
    text = os.environ.get(TIMEOUT_ENV)
    value = explicit if explicit is not None else (float(text) if text else DEFAULT_TIMEOUT_S)
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {value}")
    return value


def uses_cuda(device: str) -> bool:
    """Whether `--device` means CUDA here (auto does when a GPU is visible)."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def rank_device(device: str, info: DistInfo) -> str:
    """The device this process computes on: `device` itself for one process; with several, CUDA rank r
    uses cuda:LOCAL_RANK (pick the GPUs with CUDA_VISIBLE_DEVICES) and everything else the CPU."""
    if not info.enabled:
        return device
    if uses_cuda(device):
        if device not in ("auto", "cuda"):
            raise ConfigError(f"--device {device}: with {info.world} processes each uses cuda:LOCAL_RANK; pass "
                              "--device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if not torch.cuda.is_available() or info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {info.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "launch at most one process per GPU")
        return f"cuda:{info.local_rank}"
    if device in ("auto", "cpu"):
        return "cpu"
    raise ConfigError(f"--device {device}: data-parallel runs need CUDA GPUs or the CPU")


_joined_with: float | None = None  # the timeout this process joined its group with (for messages)


def init_from_env(device: str = "auto", timeout: float | None = None) -> DistInfo:
    """Join the process group torchrun describes (a no-op for one process); returns this rank's facts.

    NCCL on CUDA (after `cuda.set_device(LOCAL_RANK)`), gloo on the CPU. `timeout` (seconds, default
    $LBFOOD_DIST_TIMEOUT or 300) bounds the rendezvous and every collective.
    """
    info = from_env()
    if not info.enabled or torch.distributed.is_initialized():
        return info
    dev = torch.device(rank_device(device, info))
    global _joined_with
    limit = timeout_s(timeout)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                             timeout=timedelta(seconds=limit),
                                             device_id=dev if dev.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(f"rank {info.rank}: could not join the {info.world} processes at {where} within "
                               f"{limit:g} s ({_first_line(e)}); start them all with the same torchrun "
                               "--master-addr/--master-port") from None
    _joined_with = limit
    return info


def destroy() -> None:
    """Leave the process group (after a successful run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _first_line(e: BaseException) -> str:
    """The first line of an error, without gloo's `[source.cc:123]` prefixes (and no square brackets)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = re.sub(r"\[[^\]]*\]\s*", "", lines[0] if lines else "").strip() or type(e).__name__
    return line.split(". ")[0].replace("[", "(").replace("]", ")")[:300]


_COMM_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "processgroup", "by peer",
                 "tcpstore", "c10d")


def _is_comm_failure(e: BaseException) -> bool:
    if isinstance(e, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(e).lower()
    return any(m in text for m in _COMM_MARKERS)


@contextlib.contextmanager
def lost_peer(info: DistInfo) -> Iterator[None]:
    """Turn a failed collective (a process died, or stalled past the timeout) into a DistributedError
    that says so; other errors pass through unchanged."""
    try:
        yield
    except RuntimeError as e:
        if not info.enabled or not _is_comm_failure(e):
            raise
        raise DistributedError(
            f"rank {info.rank} lost the other processes: one died or stalled past the {_joined_with or timeout_s():g} s "
            f"timeout (${TIMEOUT_ENV}); the cause is in that process's output ({_first_line(e)})") from e


@contextlib.contextmanager
def main_first(info: DistInfo, when: bool = True) -> Iterator[None]:
    """Rank 0 runs the block first, the other ranks after it has finished (e.g. a download into one
    shared folder, which concurrent ranks would corrupt); a plain block for one process or `when` False."""
    if not (info.enabled and when):
        yield
        return
    if not info.is_main:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if info.is_main:
            torch.distributed.barrier()  # even on an error: the others then fail on their own, not hang


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op for one process)."""
    if info.enabled:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def agree(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` is true on every rank: keeps decisions that lead to collectives (use a cache or
    recompute?) the same everywhere, so no rank waits in a collective the others skip."""
    if not info.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return int(t.item()) == 0


def shard(n: int, info: DistInfo) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n items (sizes differ by at most one)."""
    return n * info.rank // info.world, n * (info.rank + 1) // info.world


def gather_rows(t: torch.Tensor, n: int, info: DistInfo, device: torch.device | str = "cpu") -> torch.Tensor:
    """Concatenate every rank's `shard(n)` rows of `t`, in rank order (= the original order), on every rank.

    Shard sizes follow from n, so no sizes are exchanged; rows are padded to the largest shard for
    `all_gather` and trimmed after. `device` is where the collective runs (CUDA for NCCL); the result
    comes back on `t`'s device.
    """
    if not info.enabled:
        return t
    bounds = [n * r // info.world for r in range(info.world + 1)]  # as `shard`
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    if t.shape[0] != sizes[info.rank]:
        raise ValueError(f"gather_rows: rank {info.rank} holds {t.shape[0]} rows, expected {sizes[info.rank]}")
    width = max(sizes)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: t.shape[0]] = t.to(device)
    parts = [torch.empty_like(padded) for _ in range(info.world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(t.device)


def launch_local(nproc: int, args: Sequence[str], *, cpu: bool) -> None:
    """Run `python -m lbfood ARGS` in `nproc` processes on this machine through torchrun's agent
    (what `--devices N` does); returns when all succeed.

    Raises DistributedError naming the first process that failed; exit code 2 or 3 means it printed
    its own error. Ctrl-C reaches every process (each keeps its last finished epoch) and is re-raised
    here as KeyboardInterrupt. On the CPU each process gets an equal share of the cores (OMP_NUM_THREADS).
    """
    if nproc < 2:
        raise ConfigError(f"launch_local needs 2 or more processes, got {nproc}")
    if from_env().enabled:
        raise ConfigError("--devices is for launching on this machine; under torchrun leave it at 1 "
                          "(torchrun's --nproc-per-node sets the processes)")
    if not cpu and torch.cuda.device_count() < nproc:
        raise ConfigError(f"--devices {nproc}: only {torch.cuda.device_count()} GPU(s) visible")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if cpu and "OMP_NUM_THREADS" not in os.environ:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "lbfood", *args)
    except SignalException as e:  # the agent passed the signal on to the processes, which saved their state
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise DistributedError(f"stopped by signal {int(e.sigval)}") from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        err = DistributedError(f"process {rank} of {nproc} {how}; the others were stopped")
        err.exit_code = code if code in (2, 3) else 1
        raise err from None
