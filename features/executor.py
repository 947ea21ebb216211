"""Where the CPU work of a stage runs: processes on this machine (the default) or the workers of a Dask cluster.

A stage that fans out cuts its work into *units* (:class:`Unit`): picklable values that name their inputs by path
(a feature dir and a shard index, a model file, a graph dir) plus plain values, and return a small result or write
their own output. An :class:`Executor` runs a list of units and yields their results in unit order, whatever order
they finish in, so a caller that folds them as they come takes its sums in one fixed order: where the units ran
never changes a result, and neither does ``nj``, which sets only how many local processes share them.

Objects of the Kaldi bindings (models, graphs) do not travel: a unit rebuilds them from its paths in the process
that runs it, through :func:`cached`, once per process and file.

Faults lose nothing. With a scratch dir (the pipeline gives ``exp/units``), each finished unit leaves its result
there (written atomically by the process that ran it) until the whole list is done, so running the stage again
after a failure or a killed worker redoes only the units that had not finished; a failing unit's traceback goes
to its own log there, and the error names the unit (its index, its input) and that log. A Dask scheduler that
cannot be reached, or whose workers cannot read the work dir, is reported before any unit is sent.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import threading
import traceback
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from tqdm import tqdm

from features.atomic import atomic_write, write_text_atomic
from features.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- config
@dataclass
class ClusterConfig:
    """Dask workers started as batch jobs of a Slurm, SGE or PBS queue (dask-jobqueue), each job ``cores``
    single-thread worker processes sharing ``memory``, for at most ``walltime``."""

    system: str = ""  # slurm | sge | pbs; empty: no jobs are started (executor.scheduler names a running one)
    queue: str = ""  # the partition (Slurm) or queue (SGE, PBS); empty: the system's default
    account: str = ""  # the project charged for the jobs, where the site asks for one
    jobs: int = 2  # batch jobs to start
    cores: int = 4  # cores per job, one single-thread worker process each
    memory: str = "8GB"  # memory per job, shared by its workers
    walltime: str = "04:00:00"  # a job's time limit: give the longest stage room
    job_directives: list[str] = field(default_factory=list)  # extra #SBATCH/#$/#PBS lines, e.g. ["--gres=tmp:10G"]


@dataclass
class ExecutorConfig:
    """Where the units of the CPU stages (corpus synthesis, features, GMM training and alignment, decoding) run.

    ``backend=local``: ``nj`` processes on this machine. ``backend=dask``: the workers of a Dask cluster, reached
    through ``scheduler`` (``tcp://host:8786``, or the file ``dask scheduler --scheduler-file`` writes) or started
    as batch jobs (``cluster.system=slurm`` ...). Every worker must see the work dir at the same path (a shared
    filesystem) and run this code with the same Python packages. Neither choice changes a result.
    """

    backend: str = "local"  # local | dask
    scheduler: str = ""  # dask: tcp://host:port, or a scheduler file
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    connect_timeout: float = 30.0  # seconds to reach the scheduler
    worker_timeout: float = 600.0  # seconds to wait for a first worker (batch jobs may queue)

    def __post_init__(self) -> None:
        if self.backend not in ("local", "dask"):
            raise InputError(f"executor.backend must be 'local' or 'dask', got {self.backend!r}")


# ----------------------------------------------------------------------------------------------- units
class Unit(ABC, Generic[T]):
    """One piece of a stage's work that any process can run from its fields alone."""

    @abstractmethod
    def run(self) -> T:
        """Do the work; return a small picklable result."""

    @abstractmethod
    def describe(self) -> str:
        """The unit's input, for messages (``shard 3 of /x/data/mfcc/train/feats.scp``)."""


class UnitFailed(RuntimeError):
    """A unit raised (or the process running it died): which unit, what went wrong, and where its log is."""


_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()  # a Dask worker may run units in threads
_CACHE_SIZE = 12


def cached(build: Callable[..., T], *args: object) -> T:
    """``build(*args)``, once per process for the same arguments: a worker loads a model or graph once, not per
    unit. A :class:`~pathlib.Path` argument counts with its size, modification time and inode, so a file rewritten
    in place (a forced stage) is read again; the few most recently used are kept."""
    key = (build.__module__, build.__qualname__,
           *((str(a), *_stamp(a)) if isinstance(a, Path) else (a,) for a in args))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = build(*args)
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (-1, -1, -1)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def publish(obj: object, directory: Path) -> Path:
    """Pickle ``obj`` to a file named by its content under ``directory`` (atomically), for units to load by path:
    the same content always has the same path, so a worker's :func:`cached` copy is never stale."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    path = Path(directory).resolve() / f"{hashlib.sha256(data).hexdigest()[:20]}.pkl"
    if not path.exists():
        with atomic_write(path, "wb") as f:
            f.write(data)
    return path


def load_pickle(path: str | Path) -> Any:
    """What :func:`publish` wrote."""
    return pickle.loads(Path(path).read_bytes())


# ----------------------------------------------------------------------------------------------- running one unit
@dataclass(frozen=True)
class _Keep:
    """Where unit ``index`` of a list leaves its result and its log (None: nowhere, nothing kept)."""

    result: Path | None
    log: Path | None


@dataclass(frozen=True)
class _Probe:
    """A file the driver wrote under the work dir, and what it holds: a worker that reads something else does not
    see the driver's work dir."""

    path: str
    token: str
    work_dir: str


_SEEN: set[str] = set()
_RUNNING = "running on"


def _check_probe(probe: _Probe) -> None:
    if probe.token in _SEEN:
        return
    try:
        seen = Path(probe.path).read_text()
    except OSError:
        seen = None
    if seen != probe.token:
        raise InputError(f"a Dask worker ({_host()}) does not see the work dir at the same path: put it on a "
                         "filesystem every worker mounts, or run with executor.backend=local", probe.work_dir)
    _SEEN.add(probe.token)


def _host() -> str:
    return f"{os.uname().nodename}, pid {os.getpid()}"


def _run_unit(unit: Unit[T], keep: _Keep, probe: _Probe | None) -> T:
    """Run ``unit`` in this process: its result kept on disk when it finishes, its traceback logged if it fails."""
    if probe is not None:
        _check_probe(probe)
    if keep.result is not None and keep.result.exists():  # a Dask worker lost the result after it was kept
        return load_pickle(keep.result)
    if keep.log is not None:
        keep.log.write_text(f"{_RUNNING} {_host()}: {unit.describe()}\n")  # a log: no need to be atomic
    try:
        result = unit.run()
    except BaseException:
        if keep.log is not None:
            keep.log.write_text(f"failed on {_host()}: {unit.describe()}\n{traceback.format_exc()}")
        raise
    if keep.result is not None:
        with atomic_write(keep.result, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    if keep.log is not None:
        keep.log.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------------------------- executors
class Executor(ABC):
    """Runs lists of units. ``scratch``: where finished units' results and failed units' logs are kept (None:
    nowhere; a failure then loses the list's finished units)."""

    def __init__(self, scratch: Path | None) -> None:
        self.scratch = None if scratch is None else Path(scratch).resolve()

    def map(self, units: Sequence[Unit[T]], desc: str, setup: Callable[[], None] | None = None,
            start_method: str = "fork") -> Iterator[T]:
        """The units' results in unit order. Results already kept from an earlier, interrupted run of the same
        units are read back, not computed again; the list's kept results go once it is all done. ``setup`` runs
        in each local worker process before its units, which ``start_method`` starts (``spawn`` where the parent's
        state must not be inherited: CUDA); a Dask worker's threads are set by Dask (one per worker process)."""
        units = list(units)
        keeps, kept_dir = self._keeps(units, desc)
        todo = {i for i, k in enumerate(keeps) if k.result is None or not k.result.exists()}
        if len(todo) < len(units):
            logger.info("%s: %d of %d units already done in %s", desc, len(units) - len(todo), len(units), kept_dir)
        self._start(units, todo, keeps, desc, setup, start_method)
        try:
            with tqdm(total=len(units), desc=desc, leave=False) as bar:
                for i, keep in enumerate(keeps):
                    if i in todo:
                        yield self._result(i, units, keeps, desc)
                    else:
                        assert keep.result is not None
                        yield load_pickle(keep.result)
                    bar.update()
        finally:
            self._stop()
        if kept_dir is not None:
            shutil.rmtree(kept_dir, ignore_errors=True)

    def _keeps(self, units: list[Unit], desc: str) -> tuple[list[_Keep], Path | None]:
        """Where each unit's result and log go: a dir named by the list's content, so that the same units (a stage
        run again) find what an interrupted run left, and other units never do."""
        if self.scratch is None:
            return [_Keep(None, None)] * len(units), None
        digest = hashlib.sha256()
        for unit in units:
            digest.update(hashlib.sha256(pickle.dumps(unit, protocol=pickle.HIGHEST_PROTOCOL)).digest())
        kept_dir = self.scratch / f"{desc.replace(' ', '_')}-{digest.hexdigest()[:16]}"
        kept_dir.mkdir(parents=True, exist_ok=True)
        return [_Keep(kept_dir / f"{i:05d}.pkl", kept_dir / f"{i:05d}.log") for i in range(len(units))], kept_dir

    def preload(self, build: Callable[..., Any], *args: object) -> None:
        """Load ``cached(build, *args)`` where the units will find it: local processes forked after this inherit
        it from this one (a large graph is then read once and shared); Dask workers load it at their first unit."""

    @abstractmethod
    def _start(self, units: list[Unit], todo: set[int], keeps: list[_Keep], desc: str,
               setup: Callable[[], None] | None, start_method: str) -> None:
        """Start the units of ``todo``."""

    @abstractmethod
    def _result(self, index: int, units: list[Unit], keeps: list[_Keep], desc: str) -> Any:
        """The result of unit ``index``, once it is there; a failure raises :class:`UnitFailed` (or the unit's own
        :class:`InputError`, which already names the input at fault)."""

    @abstractmethod
    def _stop(self) -> None:
        """Cancel what has not started."""

    def close(self) -> None:
        """Release what the executor holds (processes, the connection to a cluster)."""
        self._stop()


def _running(keep: _Keep) -> bool:
    """Whether the unit of ``keep`` had started and neither finished nor failed (by what its log says)."""
    try:
        return keep.log is not None and keep.log.read_text().startswith(_RUNNING)
    except FileNotFoundError:
        return False


def _failure(desc: str, index: int, unit: Unit, keep: _Keep, cause: BaseException | str) -> UnitFailed:
    what = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
    log = f"; its log: {keep.log}" if keep.log is not None and keep.log.exists() else ""
    rerun = "; the units that finished are kept: run the stage again to finish it" if keep.log is not None else ""
    return UnitFailed(f"{desc}: unit {index} ({unit.describe()}) failed: {what}{log}{rerun}")


class LocalExecutor(Executor):
    """``nj`` forked processes on this machine (the units run in this one with ``nj <= 1`` or a single unit)."""

    def __init__(self, nj: int, scratch: Path | None = None) -> None:
        super().__init__(scratch)
        self.nj = nj
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[int, Future] = {}

    def preload(self, build: Callable[..., Any], *args: object) -> None:
        cached(build, *args)

    def _start(self, units: list[Unit], todo: set[int], keeps: list[_Keep], desc: str,
               setup: Callable[[], None] | None, start_method: str) -> None:
        if self.nj > 1 and len(todo) > 1:
            # fork: the workers start at once, with this process's imports; the units still travel pickled
            self._pool = ProcessPoolExecutor(min(self.nj, len(todo)), mp_context=mp.get_context(start_method),
                                             initializer=setup)
            self._futures = {i: self._pool.submit(_run_unit, units[i], keeps[i], None) for i in sorted(todo)}

    def _result(self, index: int, units: list[Unit], keeps: list[_Keep], desc: str) -> Any:
        try:
            if self._pool is None:
                return _run_unit(units[index], keeps[index], None)
            return self._futures.pop(index).result()
        except InputError:
            raise
        except BrokenExecutor as e:
            self._stop()
            running = [i for i, k in enumerate(keeps) if _running(k)] or [index]
            raise _failure(desc, running[0], units[running[0]], keeps[running[0]],
                           "the worker process running it died (killed, or out of memory)") from e
        except Exception as e:
            raise _failure(desc, index, units[index], keeps[index], e) from e

    def _stop(self) -> None:
        """Cancel the units not started; those running finish (and are kept)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._futures = None, {}


class DaskExecutor(Executor):
    """The workers of a Dask cluster (:func:`connect`). Dask runs a unit whose worker died again on another."""

    def __init__(self, client: Any, scratch: Path, probe: _Probe, cluster: Any = None) -> None:
        super().__init__(scratch)
        self.client, self.cluster, self.probe = client, cluster, probe
        self._futures: dict[int, Any] = {}

    def _start(self, units: list[Unit], todo: set[int], keeps: list[_Keep], desc: str,
               setup: Callable[[], None] | None, start_method: str) -> None:
        run = f"{desc.replace(' ', '_')}-{uuid.uuid4().hex[:8]}"
        self._futures = {i: self.client.submit(_run_unit, units[i], keeps[i], self.probe, pure=False,
                                               key=f"{run}-{i}") for i in sorted(todo)}

    def _result(self, index: int, units: list[Unit], keeps: list[_Keep], desc: str) -> Any:
        try:
            return self._futures.pop(index).result()
        except InputError:
            raise
        except Exception as e:
            raise _failure(desc, index, units[index], keeps[index], e) from e

    def _stop(self) -> None:
        if self._futures:
            self.client.cancel(list(self._futures.values()))
        self._futures = {}

    def close(self) -> None:
        self._stop()
        with contextlib.suppress(OSError):
            Path(self.probe.path).unlink(missing_ok=True)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ----------------------------------------------------------------------------------------------- choosing one
def connect(cfg: ExecutorConfig, work_dir: Path) -> DaskExecutor:
    """Reach the Dask scheduler of ``cfg`` (or start its batch-job cluster) and check, before any unit is sent,
    that it has a worker and that every worker reads the work dir: an unreachable scheduler, a missing scheduler
    file or a work dir the workers do not see is an :class:`InputError` (one line, exit status 2)."""
    from distributed import Client

    work_dir = Path(work_dir).resolve()
    cluster = None
    where = cfg.scheduler
    try:
        if cfg.cluster.system:
            cluster = _start_cluster(cfg.cluster, work_dir)
            where = f"{cfg.cluster.system} cluster {cluster.scheduler_address}"
            client = Client(cluster, timeout=cfg.connect_timeout)
        elif not cfg.scheduler:
            raise InputError("executor.backend=dask needs executor.scheduler=tcp://host:port (or a scheduler file) "
                             "or executor.cluster.system=slurm|sge|pbs")
        elif "://" in cfg.scheduler:
            client = Client(cfg.scheduler, timeout=cfg.connect_timeout)
        else:
            if not Path(cfg.scheduler).is_file():
                raise InputError("no Dask scheduler file here (dask scheduler --scheduler-file writes one)",
                                 cfg.scheduler)
            client = Client(scheduler_file=cfg.scheduler, timeout=cfg.connect_timeout)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise InputError(f"cannot reach the Dask scheduler at {where} within {cfg.connect_timeout:g} s "
                         f"({type(e).__name__}: {e})") from e
    probe = None
    try:
        try:
            client.wait_for_workers(1, timeout=cfg.worker_timeout)
        except TimeoutError as e:
            raise InputError(f"the Dask scheduler at {where} has no worker after {cfg.worker_timeout:g} s") from e
        probe = _write_probe(work_dir / "exp" / "units")
        seen = client.run(_sees_probe, probe)
        blind = sorted(worker for worker, ok in seen.items() if not ok)
        if blind:
            raise InputError(f"Dask worker {blind[0]} ({len(blind)} of {len(seen)}) does not see the work dir at "
                             "the same path: put it on a filesystem every worker mounts, or run with "
                             "executor.backend=local", work_dir)
    except BaseException:
        if probe is not None:
            Path(probe.path).unlink(missing_ok=True)
        client.close()
        if cluster is not None:
            cluster.close()
        raise
    logger.info("executor: Dask scheduler %s, %d workers", where, len(seen))
    return DaskExecutor(client, work_dir / "exp" / "units", probe, cluster)


def _write_probe(directory: Path) -> _Probe:
    token = uuid.uuid4().hex
    path = directory / f".probe-{token[:12]}"
    write_text_atomic(path, token)
    return _Probe(str(path), token, str(directory.parent.parent))


def _sees_probe(probe: _Probe) -> bool:
    try:
        _check_probe(probe)
    except InputError:
        return False
    return True


_SUBMIT = {"slurm": "sbatch", "sge": "qsub", "pbs": "qsub"}


def _start_cluster(cfg: ClusterConfig, work_dir: Path) -> Any:
    """:func:`job_cluster`, its ``cfg.jobs`` jobs submitted (the queue's submit command must be on the PATH)."""
    if cfg.system in _SUBMIT and shutil.which(_SUBMIT[cfg.system]) is None:
        raise InputError(f"executor.cluster.system={cfg.system} submits jobs with {_SUBMIT[cfg.system]}, which is not "
                         "on this machine's PATH: run the recipe on a machine that submits jobs")
    cluster = job_cluster(cfg, work_dir)
    cluster.scale(jobs=cfg.jobs)
    return cluster


def job_cluster(cfg: ClusterConfig, work_dir: Path) -> Any:
    """A dask-jobqueue cluster for ``cfg`` (no job submitted yet) whose workers run this interpreter with this
    code on their path (the checkout and the environment must be on the shared filesystem too), one thread each."""
    import dask_jobqueue

    systems = {"slurm": dask_jobqueue.SLURMCluster, "sge": dask_jobqueue.SGECluster,
               "pbs": dask_jobqueue.PBSCluster}
    if cfg.system not in systems:
        raise InputError(f"executor.cluster.system must be one of {', '.join(systems)}, got {cfg.system!r}")
    code = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(dict.fromkeys(filter(None, [code, *os.environ.get("PYTHONPATH", "").split(os.pathsep)])))
    charge = {("project" if cfg.system == "sge" else "account"): cfg.account} if cfg.account else {}
    return systems[cfg.system](
        queue=cfg.queue or None, cores=cfg.cores, processes=cfg.cores, memory=cfg.memory, walltime=cfg.walltime,
        python=sys.executable, job_extra_directives=list(cfg.job_directives), **charge,
        job_script_prologue=[f"export PYTHONPATH={path}", f"export KALDI_ROOT={os.environ.get('KALDI_ROOT', '/tmp')}"],
        log_directory=str(Path(work_dir).resolve() / "exp" / "units" / "jobs"))


_INSTALLED: Executor | None = None


@contextlib.contextmanager
def use_executor(cfg: ExecutorConfig, work_dir: Path) -> Iterator[None]:
    """Within the block, the stages' units go where ``cfg`` says, and finished units are kept under
    ``work_dir/exp/units`` until their list is done. A Dask cluster is reached (and checked) on entry."""
    global _INSTALLED
    scratch = Path(work_dir).resolve() / "exp" / "units"
    previous = _INSTALLED
    _INSTALLED = connect(cfg, work_dir) if cfg.backend == "dask" else _ScratchOnly(scratch)
    try:
        yield
    finally:
        _INSTALLED.close()
        _INSTALLED = previous


class _ScratchOnly(LocalExecutor):
    """What :func:`use_executor` installs for ``backend=local``: the scratch dir; the processes come per call."""

    def __init__(self, scratch: Path) -> None:
        super().__init__(1, scratch)


def units_kept(nj: int) -> bool:
    """Whether :func:`executor_for` keeps finished units for a rerun (inside :func:`use_executor`)."""
    return executor_for(nj).scratch is not None


def executor_for(nj: int) -> Executor:
    """The executor for a library call with ``nj`` jobs: the Dask cluster :func:`use_executor` connected to, else
    ``nj`` local processes (keeping finished units in its scratch dir where one was given)."""
    if isinstance(_INSTALLED, DaskExecutor):
        return _INSTALLED
    return LocalExecutor(nj, None if _INSTALLED is None else _INSTALLED.scratch)
