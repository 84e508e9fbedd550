"""Meta-schedule tuning of a Relax module's heaviest tasks, with a persistent JSON database.

Tasks are the fused TIR functions of the module; they are ranked by FLOPs x weight (how often the
function is called) and the top `max_tasks` get `trials` measured candidates each. A task whose
workload already has at least `trials` records in the database is not tuned again, so the
database (one folder per target) carries work across pieces, plans and runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import linecache
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Mapping

from tierplan.runtime.store import canonical_json

__all__ = ["TuneSettings", "TuneReport", "tune_module", "database_dir", "tuning_target"]

_LOG = logging.getLogger("tierplan.compile.tune")

#: meta-schedule needs at least this many trials per task to beat the untuned build (DESIGN.md)
MIN_USEFUL_TRIALS = 16


@dataclass(frozen=True)
class TuneSettings:
    """How much to tune: trials per task, how many tasks (None = all), and the database root."""

    trials: int = 0
    max_tasks: int | None = None
    db_root: str | None = None

    @property
    def enabled(self) -> bool:
        return self.trials > 0

    def key(self) -> dict:
        """What enters the artifact cache key (the database location does not)."""
        return {"trials": self.trials, "max_tasks": self.max_tasks} if self.enabled else {}


@dataclass
class TuneReport:
    """What tuning did: tasks found, tuned now, reused from the database, and the time it took."""

    tasks_total: int = 0
    tasks_selected: list[str] = field(default_factory=list)
    tasks_tuned: list[str] = field(default_factory=list)
    tasks_reused: list[str] = field(default_factory=list)
    trials_per_task: int = 0
    tune_s: float = 0.0
    database: str = ""

    def to_dict(self) -> dict:
        return {"tasks_total": self.tasks_total, "tasks_selected": self.tasks_selected,
                "tasks_tuned": self.tasks_tuned, "tasks_reused": self.tasks_reused,
                "trials_per_task": self.trials_per_task, "tune_s": round(self.tune_s, 3),
                "database": self.database}


def database_dir(db_root: str | Path, target: Mapping) -> Path:
    """The database folder of one target under `db_root` (records are target-specific)."""
    tag = hashlib.sha256(canonical_json(dict(target)).encode()).hexdigest()[:16]
    return Path(db_root) / tag


def _light_stack(context: int = 1) -> list:
    """inspect.stack() without the per-frame module lookup (frames, file, line, source line only)."""
    frame: FrameType | None = sys._getframe(1)
    infos = []
    while frame is not None:
        fn, ln = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(fn, ln, frame.f_globals)
        infos.append(inspect.FrameInfo(frame, fn, ln, frame.f_code.co_name, [line] if line else None,
                                       0 if line else None))
        frame = frame.f_back
    return infos


def import_tensor_intrin() -> None:
    """Import tvm.s_tir.tensor_intrin (meta-schedule needs it) in seconds instead of minutes.

    Its ~500 TVMScript functions each call inspect.stack(), which looks up the module of every
    frame by scanning sys.modules; on this machine that import took 40-170 s. inspect.stack is
    swapped for a lookup-free equivalent during the import only (TVMScript reads just the frames,
    their line numbers and source lines).
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    original = inspect.stack
    inspect.stack = _light_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


def _in_process_builder_runner():
    """A meta-schedule Builder and Runner that work in this process.

    TVM's LocalBuilder starts a fresh process pool for every batch (each worker imports TVM, several
    seconds on a shared 2-core machine, past its 30 s timeout under load) and LocalRunner keeps
    another pool. Building and timing candidates here costs no process start-up; the price is no
    per-candidate timeout, acceptable for CPU candidates that meta-schedule generates valid.
    """
    import tvm
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import (
        LocalRunnerFuture, default_alloc_argument, default_run_evaluator,
    )
    from tvm.ir.utils import derived_object

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                try:
                    results.append(BuilderResult(default_export(default_build(bi.mod, bi.target, None)), None))
                except Exception as e:  # a candidate that fails to build is reported to the search, not raised
                    results.append(BuilderResult(None, f"InProcessBuilder: {type(e).__name__}: {e}"))
            return results

    @derived_object
    class InProcessRunner(PyRunner):
        def __init__(self) -> None:
            super().__init__()
            self.config = EvaluatorConfig._normalized(None)

        def run(self, runner_inputs):
            futures = []
            for ri in runner_inputs:
                try:
                    rt_mod = tvm.runtime.load_module(str(ri.artifact_path))
                    dev = tvm.runtime.device(str(ri.device_type), 0)
                    args = default_alloc_argument(dev, tuple(a.as_json() for a in ri.args_info), 1)
                    costs = default_run_evaluator(rt_mod, dev, self.config, args)
                    futures.append(LocalRunnerFuture(res=costs, error_message=None))
                except Exception as e:  # a candidate that fails to run is reported to the search
                    futures.append(LocalRunnerFuture(res=None, error_message=f"{type(e).__name__}: {e}"))
            return futures

    return InProcessBuilder(), InProcessRunner()


class _Sink:
    """A stream that drops what it is given. Meta-schedule binds a console log handler to whatever
    sys.stdout is when tuning starts and logs every trial there; pointing it here keeps stdout (which
    may carry --json) and the progress bar clean. The full logs stay in `<database>/logs/`."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


_QUIET = _Sink()


def tuning_target(target: Mapping) -> dict:
    """The target tuning and the tuned build use: the device target plus this machine's physical
    core count (meta-schedule requires `num-cores`; records are looked up by target)."""
    out = dict(target)
    if "num-cores" not in out:
        try:
            import psutil
            cores = psutil.cpu_count(logical=False)
        except ImportError:
            cores = None
        out["num-cores"] = int(cores or os.cpu_count() or 1)
    return out


def _task_flops(task) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops
    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # TVM raises TVMError subclasses for functions it cannot count; rank them last
        return 0.0


def tune_module(mod, target: Mapping, settings: TuneSettings):
    """Tune `mod` (a Relax module after the zero pipeline) for a native `target`.

    Returns (database, TuneReport). The database is a JSONDatabase in `database_dir(db_root, target)`.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    import tvm

    target = tuning_target(target)
    tgt = tvm.target.Target(dict(target))   # as tvm_backend.make_target (which imports this module)
    db_dir = database_dir(settings.db_root or ".tierplan-tuning", target)
    db_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    report = TuneReport(trials_per_task=settings.trials, database=str(db_dir))
    t0 = time.perf_counter()
    tasks = extract_tasks(mod, tgt)
    _LOG.info(f"extracted {len(tasks)} tasks in {time.perf_counter() - t0:.1f} s")
    report.tasks_total = len(tasks)
    ranked = sorted(tasks, key=lambda t: _task_flops(t) * t.weight, reverse=True)
    selected = ranked[: settings.max_tasks] if settings.max_tasks else ranked
    report.tasks_selected = [t.task_name for t in selected]
    todo = []
    for task in selected:
        workload_mod = task.dispatched[0]
        records = database.get_top_k(database.commit_workload(workload_mod), settings.trials) \
            if database.has_workload(workload_mod) else []
        if len(records) >= settings.trials:
            report.tasks_reused.append(task.task_name)
        else:
            todo.append(task)
    if todo:
        import_tensor_intrin()
        threads = max(1, os.cpu_count() or 1)
        with contextlib.redirect_stdout(_QUIET):
            contexts, weights = extracted_tasks_to_tune_contexts(todo, str(db_dir), num_threads=threads)
        _LOG.info(f"tune contexts ready after {time.perf_counter() - t0:.1f} s")
        builder, runner = _in_process_builder_runner()
        _LOG.info(f"tuning {len(todo)} task(s), {settings.trials} trials each")
        with contextlib.redirect_stdout(_QUIET):
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(db_dir),
                max_trials_global=settings.trials * len(todo), max_trials_per_task=settings.trials,
                num_trials_per_iter=min(settings.trials, 64),
                builder=builder, runner=runner, database=database, cost_model="random",
            )
        report.tasks_tuned = [t.task_name for t in todo]
        _LOG.info(f"tuned {len(todo)} task(s) in {time.perf_counter() - t0:.1f} s")
    report.tune_s = time.perf_counter() - t0
    return database, report
