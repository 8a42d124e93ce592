"""Who runs which job, the marker each finished job leaves, and waiting for the others' jobs.

    torchrun --nproc_per_node 2 -m domainpt finetune recipes/demo/tiny.yaml   # every process takes its share
    domainpt evaluate recipes/medical.yaml --shard 3/8                         # one of 8 slices (a Slurm array task)
    domainpt evaluate recipes/medical.yaml --merge                             # then the stage's manifest

A stage's jobs (grid.py) are shared out longest first onto the least-loaded worker (LPT, by planned cost):
inside a launch a worker is a process (`PartialState`: rank, device); with `--shard I/N` the I-th of N slices of
the whole list is shared again among that launch's processes. A job writes its outputs, then its marker
`<stage>/jobs/<job id>.json` (result, who ran it, seconds) — a marker is the only sign of a finished job, so a
killed stage keeps its finished jobs and the same command again does only the missing ones. A marker written
under another recipe or over other inputs (an upstream stage redone) is stale and its job runs again.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from domainpt import faults
from domainpt.data.shard import parse_shard
from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_json, file_sha256, stage_dir, stage_fingerprint

WAIT_POLL_S = 1.0
WAIT_REPORT_S = 600  # a line while waiting for other processes' jobs, every 10 minutes
HEARTBEATS = ".heartbeats"  # jobs/.heartbeats/<process>: touched while a process works on its share
HEARTBEAT_S = 30
STOPPED_AFTER_S = 600  # a process silent this long has stopped (a node lost); within one node torchrun ends all sooner


@dataclass(frozen=True)
class Job:
    """One independent piece of a stage. `cost` is planned from the recipe alone (so `--dry-run` shows the plan the
    stage will run), in forward-token equivalents: FLOPs / (2 x the model's matmul parameters)."""

    id: str
    kind: str
    model: str
    task: str | None = None
    seed: int | None = None
    cost: float = 1.0


@dataclass(frozen=True)
class Worker:
    """This process's place among all that work on a stage: its rank in the launch, its shard, its device."""

    rank: int = 0
    world: int = 1
    shard: int = 0
    shards: int = 1
    device: str = "cpu"

    @property
    def index(self) -> int:
        """The worker's number among all of them (recorded as a job's `process`)."""
        return self.shard * self.world + self.rank

    @property
    def count(self) -> int:
        return self.shards * self.world

    @property
    def main(self) -> bool:
        return self.rank == 0


def assign(jobs: list[Job], workers: int) -> list[list[Job]]:
    """Longest job first onto the least-loaded worker; ties go to the lower worker and keep the jobs' order, so every
    process computes the same shares. Each share keeps the jobs in list order."""
    loads, shares = [0.0] * workers, [[] for _ in range(workers)]
    order = {j.id: i for i, j in enumerate(jobs)}
    for job in sorted(jobs, key=lambda j: (-j.cost, order[j.id])):
        w = min(range(workers), key=lambda i: (loads[i], i))
        shares[w].append(job)
        loads[w] += job.cost
    return [sorted(s, key=lambda j: order[j.id]) for s in shares]


def this_worker(shard: str | None = None) -> Worker:
    """Rank, world and device from Accelerate's process state; the GPU of this process becomes the current one (so
    'cuda' and bitsandbytes' placement mean it), or, on CPUs, this process takes its share of the cores."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    i, n = parse_shard(shard) if shard else (0, 1)
    if state.device.type == "cuda" and state.device.index is not None:  # one process: plain "cuda", the current GPU
        torch.cuda.set_device(state.device)
    elif state.num_processes > 1 and "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1; accelerate may not
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    return Worker(state.process_index, state.num_processes, i, n, str(state.device))


class JobBook:
    """The markers of one stage's jobs: which are finished, committing one, reading them all back."""

    def __init__(self, recipe, stage: str, inputs: list[str], fingerprint: str | None = None):
        self.stage = stage
        self.root = stage_dir(recipe, stage) / "jobs"
        # what a job's result depends on: the stage's sections, or less where the caller knows (plan-mixture's pilots)
        self.fingerprint = fingerprint or stage_fingerprint(recipe, stage)
        # the manifests of the stages this one reads: a job done over another domain model is not finished
        self.inputs = {s: file_sha256(stage_dir(recipe, s) / "manifest.json") for s in inputs}

    def marker(self, job: Job) -> Path:
        return self.root / f"{job.id}.json"

    def finished(self, job: Job) -> dict | None:
        p = self.marker(job)
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):  # none yet (an atomic write never leaves half a marker)
            return None
        return m if m.get("fingerprint") == self.fingerprint and m.get("inputs") == self.inputs else None

    def commit(self, job: Job, result: dict, started: float, worker: Worker) -> float:
        seconds = time.time() - started
        atomic_write_json(self.marker(job), {
            **asdict(job), "process": worker.index, "rank": worker.rank,
            "shard": f"{worker.shard}/{worker.shards}" if worker.shards > 1 else None, "device": worker.device,
            "host": socket.gethostname(), "started": round(started, 3), "seconds": round(seconds, 3),
            "fingerprint": self.fingerprint, "inputs": self.inputs, "result": result})
        return seconds

    def collect(self, jobs: list[Job], how_to_finish: str) -> dict[str, dict]:
        """Job id -> its marker, for every job; a missing job is named (the first few) with how to finish it."""
        found = {j.id: self.finished(j) for j in jobs}
        missing = [i for i, m in found.items() if m is None]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DomainptError(f"{self.stage}: {len(missing)} of {len(jobs)} jobs have not finished "
                                f"({', '.join(missing[:5])}{more}); {how_to_finish}")
        return found


def slice_of(jobs: list[Job], worker: Worker) -> list[Job]:
    """The jobs of this worker's shard: cut from the whole list, so a slice never depends on what is finished."""
    return assign(jobs, worker.shards)[worker.shard] if worker.shards > 1 else jobs


def my_share(jobs: list[Job], book: JobBook, worker: Worker, unfinished: list[str] | None = None) -> tuple[list[Job], int]:
    """(this worker's unfinished jobs, how many of its slice finished earlier): the slice's unfinished jobs shared out
    among the launch's processes. `unfinished` (job ids) is the main process's view; by default this process's own."""
    piece = slice_of(jobs, worker)
    if unfinished is None:
        unfinished = [j.id for j in piece if book.finished(j) is None]
    todo = [j for j in piece if j.id in set(unfinished)]
    return assign(todo, worker.world)[worker.rank], len(piece) - len(todo)


def unfinished_everywhere(jobs: list[Job], book: JobBook, worker: Worker) -> list[str]:
    """The slice's unfinished job ids as the main process sees them, sent to every process: processes that each read
    a shared filesystem could see different markers (NFS caches a missing file for a while), and different lists would
    mean different shares — a job nobody runs, or one that two run at once. Also the point after which markers appear."""
    from accelerate.utils import broadcast_object_list

    mine = [j.id for j in slice_of(jobs, worker) if book.finished(j) is None] if worker.main else None
    return broadcast_object_list([mine])[0] if worker.world > 1 else mine


def run_share(jobs: list[Job], do: Callable[[Job], dict], book: JobBook, worker: Worker) -> None:
    """Run this worker's share of `jobs` (do(job) -> the job's result, committed in its marker), then wait until every
    job of the slice, other processes' too, has finished."""
    unfinished = unfinished_everywhere(jobs, book, worker)
    share, earlier = my_share(jobs, book, worker, unfinished)
    stage = book.stage
    if worker.main and earlier:
        print(f"[domainpt] {stage}: {earlier} job(s) finished earlier, kept ({book.root})", flush=True)
    print(f"[domainpt] {stage}: process {worker.index} of {worker.count} ({worker.device}) runs {len(share)} job(s), "
          f"planned cost {sum(j.cost for j in share):.3g}", flush=True)
    with Heartbeat(book.root / HEARTBEATS / str(worker.index)):
        for n, job in enumerate(share, 1):
            started = time.time()
            result = do(job)
            seconds = book.commit(job, result, started, worker)
            print(f"[domainpt] {stage} [process {worker.index}] {n}/{len(share)} {job.id}: {seconds:.1f} s", flush=True)
            faults.kill_point(f"{stage}.after_job", n)  # crash tests: killed between two committed jobs
        owners = {j.id: w for w, sh in enumerate(assign([j for j in slice_of(jobs, worker) if j.id in set(unfinished)],
                                                        worker.world)) for j in sh}
        wait_for_markers([j for j in slice_of(jobs, worker) if j.id in owners], book,
                         lambda job: book.root / HEARTBEATS / str(worker.shard * worker.world + owners[job.id]))


class Heartbeat:
    """A file touched every HEARTBEAT_S seconds (by a daemon thread, also while a long job runs) as long as the block
    runs: other processes tell a process that stopped from one that is busy."""

    def __init__(self, path: Path):
        import threading

        self.path, self.stop = Path(path), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            self.path.touch()
            if self.stop.wait(HEARTBEAT_S):
                return

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def stopped(heartbeat: Path, since: float) -> bool:
    """True when the process that keeps `heartbeat` has not touched it for STOPPED_AFTER_S (and we have waited as long)."""
    try:
        last = heartbeat.stat().st_mtime
    except OSError:  # never started: count from when we began waiting
        last = since
    return time.time() - max(last, since) > STOPPED_AFTER_S


def wait_for_markers(jobs: list[Job], book: JobBook, heartbeat_of: Callable[[Job], Path]) -> None:
    """Poll until every job has its marker: no collective call, since a process may wait longer than a barrier's
    timeout. Within one node a process that dies ends the launch (torchrun stops the others); across nodes a process
    whose heartbeat stops for STOPPED_AFTER_S ends the wait with an error naming its jobs."""
    t0 = last = time.time()
    pending = list(jobs)
    while pending := [j for j in pending if book.finished(j) is None]:
        if gone := [j for j in pending if stopped(heartbeat_of(j), t0)]:
            raise DomainptError(f"{book.stage}: the process running {gone[0].id} (and {len(gone) - 1} more pending job(s)) "
                                f"stopped {STOPPED_AFTER_S // 60} min ago without finishing; rerun the same command: "
                                "finished jobs are kept")
        if time.time() - last >= WAIT_REPORT_S:
            print(f"[domainpt] {book.stage}: waiting {time.time() - t0:.0f} s for {len(pending)} job(s) of other "
                  f"processes ({pending[0].id}, ...)", flush=True)
            last = time.time()
        time.sleep(WAIT_POLL_S)


def job_records(markers: dict[str, dict]) -> list[dict]:
    """The manifest's `jobs` list: one entry per job, who ran it and how long it took."""
    keep = ("id", "kind", "task", "model", "seed", "process", "rank", "shard", "device", "host", "started", "seconds")
    return [{**{k: m[k] for k in keep}, "planned_cost": m["cost"]} for m in markers.values()]


def parallel_summary(markers: dict[str, dict], stage_started: float, wall_s: float, workers: int) -> dict:
    """Stage wall time against the summed time of the jobs this attempt ran (markers started after the stage did):
    parallel efficiency = summed job time / (wall time x workers)."""
    now = [m for m in markers.values() if m["started"] >= stage_started]
    job_s = sum(m["seconds"] for m in now)
    return {"workers": workers, "jobs_run": len(now), "jobs_kept": len(markers) - len(now), "job_seconds": round(job_s, 3),
            "parallel_efficiency": round(job_s / (wall_s * workers), 4) if now and wall_s > 0 else None}


def merged_start(markers: dict[str, dict]) -> tuple[float, int]:
    """(when the first job started, how many processes ran jobs) for a stage merged from --shard tasks: its wall time
    runs from the first job to the merge (hosts' clocks assumed in step), its workers are those the markers name."""
    return min(m["started"] for m in markers.values()), len({m["process"] for m in markers.values()})
