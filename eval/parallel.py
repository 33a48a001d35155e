"""Many processes for `jpeglm eval` / `jpeglm sample`: who am I, which jobs are mine, wait for the others.

The launchers (`torchrun --nproc_per_node N --no-python jpeglm eval ...`, `deepspeed --num_gpus N
--no_python jpeglm eval ...`, or any that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT) start N copies of the same command; `Ranks.from_env()` joins them into one process
group (NCCL on CUDA, gloo on CPU; one device per process: cuda:LOCAL_RANK). Without those variables,
or with WORLD_SIZE=1, it is one process and no group is made.

The work is split, never shared: the jobs of a setting (prompt x seed) are cut into fixed chunks by
their global index, and rank r takes chunks r, r + N, r + 2N, ... Every sample has its own seed, so
what a chunk writes does not depend on N, nor on which rank wrote it; rank 0 then reads every
chunk's files in index order, so the report is the same for any N.

A rank that dies leaves the others waiting in a collective: gloo notices the closed socket at once,
and every collective has a timeout (`timeout_s`), so they stop with `ParallelError` naming what they
were waiting for, not hang. A rerun of the same command resumes from the files already written.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0  # a collective waits this long for the slowest rank (rank 0 scores a whole setting)


class ParallelError(RuntimeError):
    """Another process of the run stopped or the group could not be formed; the run cannot go on."""


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    _group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
        """This process's place among the launcher's processes (RANK, WORLD_SIZE, LOCAL_RANK)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        except ValueError as e:
            raise ParallelError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from e
        if world < 1 or not 0 <= rank < world:
            raise ParallelError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        ranks = cls(rank, world, local, timeout_s)
        if world > 1:
            ranks._join()
        return ranks

    def _join(self) -> None:
        import torch
        import torch.distributed as dist

        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ParallelError(f"WORLD_SIZE={self.world_size} but {var} is not set: start the processes with "
                                    "torchrun or deepspeed (they set it)")
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            try:
                dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                        timeout=datetime.timedelta(seconds=self.timeout_s))
            except Exception as e:  # every rendezvous failure becomes one clear line
                raise ParallelError(f"rank {self.rank}: could not join the {self.world_size} processes: "
                                    f"{type(e).__name__}: {e}") from e
        self._group = True

    def device(self, asked: str | None) -> str | None:
        """The device of this process: the one asked for on one process; cuda:LOCAL_RANK on many (when
        CUDA is there and no CPU was asked for)."""
        if self.world_size == 1 or (asked and asked.startswith("cpu")):
            return asked
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return asked

    # -- the work ---------------------------------------------------------------------------------
    def mine(self, chunks: list[T]) -> list[T]:
        """This rank's share of a list of chunks: every world_size-th, starting at its rank."""
        return chunks[self.rank :: self.world_size]

    def progress_bar(self, total: int, desc: str):
        """A tqdm bar (a context manager with .update) that only rank 0 shows."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.is_main or total == 0, leave=False, dynamic_ncols=True)

    # -- collectives ------------------------------------------------------------------------------
    def barrier(self, what: str) -> None:
        """Wait until every rank got here (`what` names the step in the error when one never does)."""
        if not self._group:
            return
        import torch.distributed as dist

        try:
            # monitored_barrier (gloo) names the missing rank and honours the timeout; NCCL has only barrier
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout_s), wait_all_ranks=True)
            else:
                dist.barrier()
        except Exception as e:
            raise self._lost(what, e) from e

    def gather(self, value, what: str) -> list | None:
        """Every rank's `value` on rank 0 (a list in rank order); None on the other ranks."""
        if not self._group:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        try:
            dist.gather_object(value, out, dst=0)
        except Exception as e:
            raise self._lost(what, e) from e
        return out

    def broadcast(self, value, what: str):
        """Rank 0's `value` on every rank."""
        if not self._group:
            return value
        import torch.distributed as dist

        box = [value]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as e:
            raise self._lost(what, e) from e
        return box[0]

    def agree(self, ok: bool, what: str) -> list[int]:
        """The ranks where `ok` is False (the same list on every rank), so all of them skip together."""
        parts = self.gather(bool(ok), what)
        return self.broadcast([r for r, v in enumerate(parts) if not v] if parts is not None else None, what)

    def _lost(self, what: str, e: Exception) -> ParallelError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return ParallelError(f"rank {self.rank} of {self.world_size}: another process stopped or timed out "
                             f"({self.timeout_s:g} s) while {what} ({type(e).__name__}: {first}); the files written "
                             "so far are kept: rerun the same command to resume")

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._group = False


def chunked(n: int, size: int) -> list[range]:
    """0..n-1 cut into consecutive ranges of `size` (the last shorter): the unit of work of a rank."""
    return [range(s, min(s + size, n)) for s in range(0, n, max(1, size))]
