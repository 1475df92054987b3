"""Where a round's candidates are evaluated: in-process, a local process pool, or Ray.

Every evaluator takes the candidates of one round as kept-count dicts and reports each
result (:class:`CandidateResult`) through a callback as it finishes, in any order; the
search loop puts them back in proposal order, so the result of a search depends on its
seed and ``parallel`` (K), never on what evaluated the candidates.

==================  =====================================================================
evaluator           what runs a candidate
==================  =====================================================================
in-process          the search process itself (the default)
``--workers N``     N spawned processes; each builds the reward function once from a
                    :class:`RewardJob` (model bytes + data splits) and keeps it; a worker
                    that dies is replaced and its candidate retried
``--ray [ADDR]``    one Ray actor per worker on the cluster at ADDR (or a local cluster
                    started with ``ray.init(num_cpus=N)``); the job goes into the object
                    store once (``ray.put``); an actor that dies is replaced and its
                    candidate retried on the new one
==================  =====================================================================

Bit-identical rewards: every evaluator scores a candidate with the same pinned thread
counts, ``threads`` onnxruntime intra-op threads and ``threads`` torch threads (``--threads``,
default 1), so the least-squares fit and the onnxruntime pass do the same arithmetic in
whichever process they run.

Ctrl-C (or any exception raised by the callback) cancels outstanding work: pool workers are
terminated, Ray actors killed, a Ray cluster started here shut down.
"""

from __future__ import annotations

import os
import signal
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.search.reward import PlanEvaluator

#: A candidate that took down this many workers in a row is an error, not bad luck.
MAX_ATTEMPTS = 3
#: Environment variable naming a file each worker appends ``PID ready|start|done`` lines to
#: (a test hook: tests kill a busy worker mid-search and check that nothing changes).
PID_FILE_ENV = "ONNXPRUNE_WORKER_PID_FILE"
RAY_HINT = "install it with `pip install 'onnxprune[ray]'` (ray>=2.9)"

OnResult = Callable[[int, "CandidateResult"], None]


@dataclass
class CandidateResult:
    """One evaluated candidate: its reward, the evaluation's wall time, the execution
    provider that ran it and the pid of the process that did."""

    reward: float
    seconds: float
    provider: str
    pid: int

    def __str__(self) -> str:
        return f"reward {self.reward:.4f} in {self.seconds:.2f} s ({self.provider}, pid {self.pid})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reward": self.reward,
            "seconds": self.seconds,
            "provider": self.provider,
            "pid": self.pid,
        }


@dataclass
class RewardJob:
    """Everything a worker needs to build the reward function once (picklable).

    ``model_bytes``: the analysed model; ``groups``: ``(id, size)`` of every channel group,
    which the worker's own analysis of the bytes must reproduce; the rest are the
    :class:`~onnxprune.search.reward.PlanEvaluator` arguments, ``threads`` pinned.
    """

    model_bytes: bytes
    groups: list[tuple[int, int]]
    scores: dict[int, np.ndarray]
    split: Any
    fit_split: Any
    metric: str
    reference: list[np.ndarray] | None
    device: str
    batch_size: int
    threads: int
    recover_images: int | None
    pid_file: str | None = None

    def __str__(self) -> str:
        return (
            f"reward job: {len(self.model_bytes):,} model bytes, {len(self.groups)} groups, "
            f"{self.metric} on {len(self.split)} samples, {self.threads} thread(s), {self.device}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_bytes": len(self.model_bytes),
            "groups": len(self.groups),
            "metric": self.metric,
            "samples": len(self.split),
            "threads": self.threads,
            "device": self.device,
        }

    @classmethod
    def of(cls, evaluator: PlanEvaluator, threads: int) -> RewardJob:
        analysis = evaluator.analysis
        return cls(
            model_bytes=analysis.model.SerializeToString(),
            groups=[(g.id, g.size) for g in analysis.prunable_groups()],
            scores={int(k): np.asarray(v) for k, v in evaluator.scores.items()},
            split=evaluator.split,
            fit_split=evaluator.fit_split,
            metric=evaluator.metric,
            reference=evaluator.reference,
            device=evaluator.device,
            batch_size=evaluator.batch_size,
            threads=threads,
            recover_images=evaluator.recover_images,
            pid_file=os.environ.get(PID_FILE_ENV),
        )

    def build(self) -> PlanEvaluator:
        """The reward function, from the model bytes (analysed again here)."""
        import onnx

        from onnxprune.deps import analyze

        if self.recover_images:
            import onnxprune.recover.lsq  # noqa: F401 - torch loads now, not in the first candidate

        analysis = analyze(onnx.load_from_string(self.model_bytes))
        groups = [(g.id, g.size) for g in analysis.prunable_groups()]
        if groups != self.groups:
            raise InternalError(
                "a search worker's channel analysis differs from the search's "
                f"({len(groups)} vs {len(self.groups)} groups); report this model"
            )
        return PlanEvaluator(
            analysis,
            self.scores,
            self.split,
            self.metric,
            self.reference,
            self.device,
            self.batch_size,
            self.threads,
            recover_images=self.recover_images,
            fit_split=self.fit_split,
        )

    def report(self, event: str) -> None:
        """Append ``PID event`` to :data:`PID_FILE_ENV`'s file, when it is set."""
        if self.pid_file:
            with open(self.pid_file, "a") as handle:
                handle.write(f"{os.getpid()} {event}\n")


def evaluate_candidate(
    reward_fn: PlanEvaluator, kept: dict[int, int], job: RewardJob | None = None
) -> CandidateResult:
    """``reward_fn(kept)``; its least squares runs torch on ``reward_fn.threads`` threads
    (:func:`onnxprune.recover.batching.recovery_threads`). A worker passes its ``job`` to
    report start and end, see :data:`PID_FILE_ENV`."""
    start = time.perf_counter()
    if job is not None:
        job.report("start")
    reward = float(reward_fn(kept))
    if job is not None:
        job.report("done")
    return CandidateResult(reward, time.perf_counter() - start, reward_fn.provider, os.getpid())


class Evaluator(ABC):
    """Evaluates the candidates of a round (see the module docstring); a context manager
    whose exit releases the workers."""

    kind = ""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self.busy = 0  # candidates running right now
        self.evaluated = 0
        self.restarts = 0  # workers replaced after dying
        self.retried = 0  # candidates evaluated again because their worker died
        self.providers: set[str] = set()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __str__(self) -> str:
        return f"{self.kind} evaluator, {self.workers} worker(s), {self.threads} thread(s) each"

    def to_dict(self) -> dict[str, Any]:
        """What report.json records about the evaluator."""
        return {
            "kind": self.kind,
            "workers": self.workers,
            "threads_per_worker": self.threads,
            "providers": sorted(self.providers),
            "evaluated": self.evaluated,
            "worker_restarts": self.restarts,
            "retried_candidates": self.retried,
        }

    @property
    def alive(self) -> int:
        """Workers ready to evaluate (or starting)."""
        return self.workers

    @abstractmethod
    def run(self, candidates: Sequence[dict[int, int]], on_result: OnResult) -> None:
        """Evaluate every candidate; ``on_result(index, result)`` as each finishes."""

    def close(self) -> None:
        """Release the workers (idempotent); the in-process evaluator has none."""
        self.busy = 0

    def _finished(self, result: CandidateResult) -> None:
        self.evaluated += 1
        self.providers.add(result.provider)


class InProcessEvaluator(Evaluator):
    """The search process evaluates the candidates one after the other."""

    kind = "in-process"

    def __init__(self, reward_fn: PlanEvaluator, threads: int) -> None:
        super().__init__(1, threads)
        self.reward_fn = reward_fn.pinned(threads)

    def run(self, candidates: Sequence[dict[int, int]], on_result: OnResult) -> None:
        for index, kept in enumerate(candidates):
            self.busy = 1
            result = evaluate_candidate(self.reward_fn, kept)
            self.busy = 0
            self._finished(result)
            on_result(index, result)


def _pool_worker(conn: Any, job: RewardJob) -> None:
    """A process-pool worker: build the reward once, then answer ``(index, kept)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the search process's to handle
    try:
        reward_fn = job.build()
    except BaseException as exc:  # the parent turns this into one clear error
        conn.send(("failed", -1, f"{type(exc).__name__}: {exc}"))
        return
    job.report("ready")
    conn.send(("ready", -1, os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the search process is gone
            return
        if message is None:
            return
        index, kept = message
        try:
            conn.send(("done", index, evaluate_candidate(reward_fn, kept, job)))
        except Exception as exc:  # a bad candidate is reported, the worker lives on
            conn.send(("error", index, f"{type(exc).__name__}: {exc}"))


@dataclass
class _PoolWorker:
    process: Any
    conn: Any
    task: int | None = None
    pid: int | None = None


@dataclass
class _Attempts:
    """How often each candidate of a round lost its worker."""

    counts: dict[int, int] = field(default_factory=dict)

    def lost(self, index: int, kept: dict[int, int], why: str) -> None:
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.counts[index] >= MAX_ATTEMPTS:
            raise OnnxPruneError(
                f"candidate {kept} took down {MAX_ATTEMPTS} search workers in a row ({why}); "
                "it may need more memory than a worker has: use fewer --workers or a smaller "
                "recover_images"
            )


class ProcessPoolEvaluator(Evaluator):
    """``workers`` spawned processes, managed one by one (a dead worker is replaced, its
    candidate retried; ``concurrent.futures`` would break the whole pool instead)."""

    kind = "process-pool"

    def __init__(self, job: RewardJob, workers: int) -> None:
        import multiprocessing

        super().__init__(workers, job.threads)
        self.job = job
        # spawn: a fresh interpreter per worker (no forked torch/onnxruntime thread state)
        self._context = multiprocessing.get_context("spawn")
        self._pool: list[_PoolWorker] = []
        self._closed = False
        for _ in range(workers):
            self._pool.append(self._start())

    def _start(self) -> _PoolWorker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_pool_worker, args=(child, self.job), name="onnxprune-search-worker"
        )
        process.daemon = True
        process.start()
        child.close()
        return _PoolWorker(process, parent)

    @property
    def alive(self) -> int:
        return sum(w.process.is_alive() for w in self._pool)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._pool]

    def run(self, candidates: Sequence[dict[int, int]], on_result: OnResult) -> None:
        from multiprocessing.connection import wait

        pending = deque(range(len(candidates)))
        attempts, remaining = _Attempts(), len(candidates)
        try:
            while remaining:
                self._dispatch(pending, candidates)
                handles = [w.conn for w in self._pool] + [w.process.sentinel for w in self._pool]
                wait(handles)
                finished: list[tuple[int, CandidateResult]] = []
                for slot, worker in enumerate(self._pool):
                    finished += self._collect(worker)
                    if not worker.process.is_alive():
                        self._replace(slot, pending, candidates, attempts)
                self._dispatch(pending, candidates)  # keep workers busy during callbacks
                for index, result in finished:
                    remaining -= 1
                    self._finished(result)
                    on_result(index, result)
        except BaseException:
            self.close()  # cancels the candidates in flight
            raise

    def _dispatch(self, pending: deque[int], candidates: Sequence[dict[int, int]]) -> None:
        for worker in self._pool:
            if worker.task is None and pending and worker.process.is_alive():
                index = pending.popleft()
                worker.conn.send((index, candidates[index]))
                worker.task = index
        self.busy = sum(w.task is not None for w in self._pool)

    def _collect(self, worker: _PoolWorker) -> list[tuple[int, CandidateResult]]:
        """Every message the worker has sent; raises for a failed start or a bad candidate."""
        finished = []
        try:
            while worker.conn.poll():
                kind, index, payload = worker.conn.recv()
                if kind == "ready":
                    worker.pid = payload
                elif kind == "failed":
                    raise OnnxPruneError(f"a search worker could not start: {payload}")
                elif kind == "error":
                    raise OnnxPruneError(f"evaluating candidate {index} failed: {payload}")
                else:
                    worker.task = None
                    finished.append((index, payload))
        except (EOFError, OSError):
            worker.process.join(timeout=5)  # it died; the caller replaces it
        return finished

    def _replace(
        self,
        slot: int,
        pending: deque[int],
        candidates: Sequence[dict[int, int]],
        attempts: _Attempts,
    ) -> None:
        worker = self._pool[slot]
        worker.process.join(timeout=5)
        worker.conn.close()
        if worker.task is not None:
            why = f"exit code {worker.process.exitcode}"
            attempts.lost(worker.task, candidates[worker.task], why)
            pending.appendleft(worker.task)
            self.retried += 1
        self.restarts += 1
        self._pool[slot] = self._start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._pool:
            if worker.process.is_alive() and worker.task is None:
                try:
                    worker.conn.send(None)
                except (OSError, BrokenPipeError):
                    pass  # already gone
            else:
                worker.process.terminate()
        for worker in self._pool:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.busy = 0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise OnnxPruneError(f"--ray needs the optional package ray: {RAY_HINT}") from exc
    return ray


class RayWorker:
    """The body of one Ray actor: builds the reward function once from the job."""

    def __init__(self, job: RewardJob) -> None:
        self.job = job
        self.reward_fn = job.build()
        job.report("ready")

    def evaluate(self, kept: dict[int, int]) -> CandidateResult:
        return evaluate_candidate(self.reward_fn, kept, self.job)


def ray_actor_options(threads: int, gpus_per_worker: float) -> dict[str, Any]:
    """Resources one actor asks for: ``threads`` CPUs, ``gpus_per_worker`` GPUs (if > 0)."""
    options: dict[str, Any] = {"num_cpus": threads, "max_restarts": 0}
    if gpus_per_worker > 0:
        options["num_gpus"] = gpus_per_worker
    return options


class RayEvaluator(Evaluator):
    """One Ray actor per worker on a Ray cluster (see the module docstring)."""

    kind = "ray"

    def __init__(
        self,
        job: RewardJob,
        workers: int | None,
        address: str | None,
        gpus_per_worker: float = 0.0,
    ) -> None:
        ray = _import_ray()
        self._ray = ray
        self.address = address or "local"
        self._started_here = False
        if not ray.is_initialized():
            self._init(ray, address, workers, job.threads)
        total = int(ray.cluster_resources().get("CPU", 1))
        super().__init__(workers or max(1, total // job.threads), job.threads)
        self.gpus_per_worker = gpus_per_worker
        self.ray_setup_seconds = 0.0
        start = time.perf_counter()
        self._job_ref = ray.put(job)  # the model and the data cross to the cluster once
        self.ray_setup_seconds = time.perf_counter() - start
        remote = ray.remote(**ray_actor_options(job.threads, gpus_per_worker))(RayWorker)
        self._actor_class = remote
        self._actors = [remote.remote(self._job_ref) for _ in range(self.workers)]
        self._closed = False

    def _init(self, ray: Any, address: str | None, workers: int | None, threads: int) -> None:
        import onnxprune

        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                # the workers import the same onnxprune as this process
                package_root = str(Path(onnxprune.__file__).resolve().parent.parent)
                python_path = os.pathsep.join(
                    p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
                )
                ray.init(
                    num_cpus=(workers or os.cpu_count() or 1) * threads,
                    include_dashboard=False,
                    logging_level="ERROR",
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": python_path}},
                )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at '{address}'" if address else "a local Ray cluster"
            raise OnnxPruneError(
                f"--ray: cannot connect to {where} ({exc}); start one with `ray start --head` "
                "and pass its address, or give --ray without an address for a local cluster"
            ) from exc
        self._started_here = True

    def __str__(self) -> str:
        return f"ray evaluator at {self.address}, {self.workers} actor(s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "address": self.address,
            "gpus_per_worker": self.gpus_per_worker,
        }

    def run(self, candidates: Sequence[dict[int, int]], on_result: OnResult) -> None:
        ray = self._ray
        pending = deque(range(len(candidates)))
        attempts, remaining = _Attempts(), len(candidates)
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (actor slot, candidate)
        try:
            while remaining:
                busy = {slot for slot, _ in in_flight.values()}
                for slot in range(len(self._actors)):
                    if slot not in busy and pending:
                        index = pending.popleft()
                        ref = self._actors[slot].evaluate.remote(candidates[index])
                        in_flight[ref] = (slot, index)
                self.busy = len(in_flight)
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                slot, index = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayActorError as exc:
                    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                    attempts.lost(index, candidates[index], why)
                    pending.appendleft(index)
                    self.retried += 1
                    self._replace(slot)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise OnnxPruneError(
                        f"evaluating candidate {index} failed on Ray: {exc.cause!r}"
                    ) from exc
                remaining -= 1
                self.busy = len(in_flight)
                self._finished(result)
                on_result(index, result)
        except BaseException:
            for ref in in_flight:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: S110 - best effort: the actors are killed next
                    pass
            self.close()
            raise

    def _replace(self, slot: int) -> None:
        self._ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._actor_class.remote(self._job_ref)
        self.restarts += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: S110 - an actor already gone needs no kill
                pass
        self._actors = []
        self.busy = 0
        if self._started_here:
            self._ray.shutdown()


@dataclass
class Execution:
    """How a search evaluates its candidates: ``workers`` (0: in-process; with ``ray``:
    actors, default one per cluster CPU), ``ray`` (use Ray), ``ray_address`` (None: start a
    local cluster), ``gpus_per_worker`` (Ray ``num_gpus`` per actor)."""

    workers: int = 0
    ray: bool = False
    ray_address: str | None = None
    gpus_per_worker: float = 0.0

    def __str__(self) -> str:
        if self.ray:
            return f"ray ({self.ray_address or 'local cluster'}, {self.workers or 'auto'} workers)"
        return f"process pool of {self.workers}" if self.workers else "in-process"

    def to_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "ray": self.ray,
            "ray_address": self.ray_address,
            "gpus_per_worker": self.gpus_per_worker,
        }

    def check(self, device: str) -> None:
        """Refuse bad settings before any work (the Ray import included)."""
        if self.workers < 0:
            raise OnnxPruneError(f"--workers must be >= 0 (0: in-process), got {self.workers}")
        if self.gpus_per_worker < 0:
            raise OnnxPruneError(f"--ray-gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.gpus_per_worker and not self.ray:
            raise OnnxPruneError("--ray-gpus-per-worker needs --ray")
        if self.gpus_per_worker and device == "cpu":
            raise OnnxPruneError(
                "--ray-gpus-per-worker asks for GPUs but --device is cpu; use --device cuda "
                "(or auto) so the workers evaluate on them"
            )
        if self.ray:
            _import_ray()

    def build(self, reward_fn: PlanEvaluator, threads: int) -> Evaluator:
        """The evaluator for ``reward_fn``, ``threads`` threads per candidate."""
        if self.ray:
            job = RewardJob.of(reward_fn, threads)
            return RayEvaluator(job, self.workers or None, self.ray_address, self.gpus_per_worker)
        if self.workers:
            return ProcessPoolEvaluator(RewardJob.of(reward_fn, threads), self.workers)
        return InProcessEvaluator(reward_fn, threads)
