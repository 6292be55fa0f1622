"""Calibration benchmark: onnxq against onnxruntime's calibrators and a float forward pass.

Run it from the repository root, one benchmark process at a time (it starts its children
one after the other)::

    python bench/calibration.py                    # full: N in {16, 64, 256}, ~20 min
    python bench/calibration.py --quick            # N in {16, 64}
    python bench/calibration.py --out /tmp/b.md --json /tmp/b.json   # keep the raw results
    python bench/calibration.py --render /tmp/b.json                 # re-render, no runs

What is measured (models from ``bench/models.py``: ``conv16`` and ``encoder``; calibration
data is N random-normal samples, fixed seed, in one ``.npz``; batches of 8; 2 intra-op
threads everywhere):

* **onnxq**: ``onnxq.calibrate(model, data, CalibrationConfig(method, batch_size=8,
  bins=2048, percentile=99.99), threads=2)`` for minmax, percentile, entropy, mse. The time
  is the whole call (model loading, data validation, preparation, session creation, the
  pass over the data, the range search). The child also wraps onnxq's internals (module
  globals of ``onnxq.calibration.calibrate`` and ``onnxq.calibration.collect``, without
  changing onnxq) to split that time.
* **onnxruntime**: ``onnxruntime.quantization.calibrate.create_calibrator`` (MinMax,
  Entropy, Percentile; ``num_bins`` 2048, ``percentile`` 99.99, ``num_quantized_bins``
  128), then ``collect_data`` with a reader yielding the same batches and
  ``compute_data``. Only ``collect_data + compute_data`` is timed; ``create_calibrator``
  (shape inference, graph augmentation, session creation) is reported apart. onnxruntime
  has no MSE calibrator. Its calibrator builds its session with default options
  (``intra_op_num_threads`` 0: one thread per physical core) and no hook to change them,
  so the child replaces ``CalibraterBase.create_inference_session`` with the same code
  plus ``intra_op_num_threads = 2``.
* **float forward**: a plain ``InferenceSession`` (default optimizations, 2 threads) on
  the float model running the same N samples in batches of 8; only the runs are timed.

Every configuration runs in a fresh child process (``python bench/calibration.py --child
SPEC``) that reports JSON on stdout: the best wall time of 1 to 7 repetitions (repeated
while the total stays under 3 s; the median is kept in the raw results) and the peak RSS
(``ru_maxrss``, MiB). Children get an
address-space limit (``RLIMIT_AS``, 16 GiB) and a timeout (600 s); a failure is recorded
with its reason and the benchmark goes on. The machine may be shared: before each child the
parent waits (at most 15 s, 5 min in all) until other processes use under 0.3 of a core,
and it records the CPU other processes used while each child ran (``/proc/stat`` minus the
child's own CPU time), reported as "background cores".

Two microbenchmarks, each in a child too:

* **KL search**: ``onnxq.calibration.methods.entropy_range`` on a ``HistogramObserver(2048)``
  fed 2**20 Student-t (3 degrees of freedom) values, median of 20 runs; and onnxruntime's
  ``HistogramCollector.get_entropy_threshold`` on a 2048-bin histogram of the same values.
* **Preparation scaling**: ``bench.models.big_graph`` with 500 to 4000 nodes: onnxq's
  ``prepare`` + ``candidate_tensors`` + ``with_outputs`` (no calibration session), and
  onnxruntime's ``create_calibrator`` (MinMax) split into loading with shape inference,
  ``augment_graph`` and session creation.

The results go to the section "## Calibration (bench/calibration.py)" of ``--out``
(default ``docs/benchmarks.md``); other "## " sections of that file are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import calibrate as ort_calib

import onnxq

from models import big_graph, conv16, encoder, input_shape, save_model

Result = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
SECTION = "Calibration (bench/calibration.py)"
MARKER = "@@BENCH_RESULT@@ "
SEED = 1234
BATCH = 8
THREADS = 2
BINS = 2048
PERCENTILE = 99.99
QUANTIZED_BINS = 128
MODELS = ("conv16", "encoder")
SIZES = (16, 64, 256)
QUICK_SIZES = (16, 64)
PREP_SIZES = (500, 1000, 2000, 4000)
ONNXQ_METHODS = ("minmax", "percentile", "entropy", "mse")
ORT_METHODS = {
    "minmax": ort_calib.CalibrationMethod.MinMax,
    "percentile": ort_calib.CalibrationMethod.Percentile,
    "entropy": ort_calib.CalibrationMethod.Entropy,
}
ORT_OPTIONS = {"num_bins": BINS, "percentile": PERCENTILE, "num_quantized_bins": QUANTIZED_BINS}
REPEAT_BUDGET_S = 3.0
MAX_REPEATS = 7
QUIET_CORES = 0.3  # background CPU use (cores) under which the machine counts as quiet
QUIET_WAIT_S = 15.0  # longest wait for quiet before one child
QUIET_BUDGET_S = 300.0  # longest wait for quiet over the whole run
BUSY_CORES = 0.5  # a timing taken while other processes used more is flagged ‡
KL_VALUES = 1 << 20
KL_RUNS = 20

# --------------------------------------------------------------------------- child side


def _peak_mb() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _repeat(run: Callable[[], tuple[float, Result]]) -> tuple[list[float], list[Result]]:
    """Call ``run`` (which returns its own timed seconds and details) at least once, again
    while the timed total stays under the budget, at most ``MAX_REPEATS`` times."""
    times: list[float] = []
    details: list[Result] = []
    while not times or (sum(times) < REPEAT_BUDGET_S and len(times) < MAX_REPEATS):
        seconds, info = run()
        times.append(seconds)
        details.append(info)
        gc.collect()
    return times, details


def _best_run(times: list[float], details: list[Result]) -> tuple[float, Result]:
    """The best (least disturbed) time, the details of that run and the median time."""
    best = min(range(len(times)), key=lambda i: times[i])
    return times[best], {**details[best], "median_s": statistics.median(times)}


class _Timings:
    """Accumulated seconds per label, filled by wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        return timed

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds


def _instrument_onnxq(timings: _Timings) -> None:
    """Wrap the names ``onnxq.calibrate`` and its float session look up in their modules,
    to split its time (onnxq itself is unchanged)."""
    import onnxq.calibration.calibrate as cal
    import onnxq.calibration.collect as collect
    import onnxq.calibration.passplan as passplan

    for name in ("load_model", "open_data", "prepare", "calibrated_tensors"):
        setattr(cal, name, timings.wrap(name, getattr(cal, name)))
    for name in ("candidate_tensors", "with_outputs"):
        setattr(collect, name, timings.wrap(name, getattr(collect, name)))
    passplan.finish = timings.wrap("finish", passplan.finish)  # type: ignore[attr-defined]
    session = collect.FloatSession
    session.sample_bytes = timings.wrap("probe", session.sample_bytes)  # type: ignore[method-assign]
    streaming = {"on": False}
    observe_shard = collect.observe_shard

    def observe(*args: Any, **kwargs: Any) -> Any:
        streaming["on"] = True
        try:
            return timings.wrap("observe", observe_shard)(*args, **kwargs)
        finally:
            streaming["on"] = False

    collect.observe_shard = observe  # type: ignore[assignment]
    base = collect.Runner

    class TimedRunner(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().__init__(*args, **kwargs)
            timings.add("session", time.perf_counter() - start)

        def run(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            try:
                return super().run(*args, **kwargs)  # type: ignore[no-any-return]
            finally:
                if streaming["on"]:  # the pass over the data, not the probe
                    timings.add("run", time.perf_counter() - start)

    collect.Runner = TimedRunner  # type: ignore[misc]


def _child_onnxq(spec: Result) -> Result:
    timings = _Timings()
    _instrument_onnxq(timings)
    config = onnxq.CalibrationConfig(
        method=onnxq.CalibrationMethod(spec["method"]),
        batch_size=BATCH,
        bins=BINS,
        percentile=PERCENTILE,
    )
    base_mb = _peak_mb()

    def run() -> tuple[float, Result]:
        timings.seconds.clear()
        start = time.perf_counter()
        ranges = onnxq.calibrate(spec["model"], spec["data"], config, threads=THREADS)
        seconds = time.perf_counter() - start
        keys = ("candidate_tensors", "calibrated_tensors", "with_outputs", "probe", "session")
        s = {k: 0.0 for k in keys}
        s.update(timings.seconds)
        split = {
            # the probe (one sample's bytes, to size the batches) makes the session
            # (with_outputs + session) on its run: all of it is setup
            "setup": s["load_model"]
            + s["open_data"]
            + s["prepare"]
            + s["candidate_tensors"]
            + s["calibrated_tensors"]
            + s["probe"],
            "prepare": s["prepare"],
            "session": s["session"],
            "run": s["run"],
            "observe": s["observe"] - s["run"],
            "finish": s["finish"],
        }
        return seconds, {"tensors": len(ranges.tensors), "split": split}

    times, details = _repeat(run)
    seconds, info = _best_run(times, details)
    return {"time_s": seconds, "times": times, "base_mb": base_mb, **info}


def _install_ort_threads(threads: int) -> None:
    """onnxruntime's ``CalibraterBase.create_inference_session``, plus a thread count."""

    def create_inference_session(self: Any) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads
        self.infer_session = ort.InferenceSession(
            self.augmented_model_path, sess_options=opts, providers=self.execution_providers
        )

    ort_calib.CalibraterBase.create_inference_session = create_inference_session


class _Reader(ort_calib.CalibrationDataReader):
    """The samples of ``feeds`` (batched along axis 0) in batches of ``batch``."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int) -> None:
        count = next(iter(feeds.values())).shape[0]
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [
                {k: np.ascontiguousarray(v[i : i + batch]) for k, v in feeds.items()}
                for i in range(0, count, batch)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _load_feeds(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _child_ort(spec: Result) -> Result:
    _install_ort_threads(THREADS)
    method = ORT_METHODS[spec["method"]]
    feeds = _load_feeds(spec["data"])
    work = Path(spec["work"])
    base_mb = _peak_mb()
    counter = iter(range(MAX_REPEATS))

    def run() -> tuple[float, Result]:
        aug = work / f"augmented_{next(counter)}.onnx"
        start = time.perf_counter()
        calibrator = ort_calib.create_calibrator(
            Path(spec["model"]),
            None,
            augmented_model_path=str(aug),
            calibrate_method=method,
            use_external_data_format=False,
            extra_options=dict(ORT_OPTIONS),
        )
        setup = time.perf_counter() - start
        reader = _Reader(feeds, BATCH)
        start = time.perf_counter()
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        seconds = time.perf_counter() - start
        tensors = len(ranges.data)
        del calibrator, ranges, reader
        aug.unlink(missing_ok=True)
        return seconds, {"tensors": tensors, "setup_s": setup}

    times, details = _repeat(run)
    seconds, info = _best_run(times, details)
    return {"time_s": seconds, "times": times, "base_mb": base_mb, **info}


def _child_forward(spec: Result) -> Result:
    feeds = _load_feeds(spec["data"])
    count = next(iter(feeds.values())).shape[0]
    batches = [
        {k: np.ascontiguousarray(v[i : i + BATCH]) for k, v in feeds.items()}
        for i in range(0, count, BATCH)
    ]
    base_mb = _peak_mb()

    def run() -> tuple[float, Result]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            spec["model"], sess_options=opts, providers=["CPUExecutionProvider"]
        )
        start = time.perf_counter()
        for feed in batches:
            session.run(None, feed)
        return time.perf_counter() - start, {}

    times, details = _repeat(run)
    seconds, info = _best_run(times, details)
    return {"time_s": seconds, "times": times, "base_mb": base_mb, **info}


def _median_ms(fn: Callable[[], object], runs: int, budget_s: float = 60.0) -> Result:
    """Median milliseconds of ``fn`` over ``runs`` calls (fewer if over ``budget_s``)."""
    times: list[float] = []
    value: object = None
    while len(times) < runs and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return {
        "median_ms": statistics.median(times) * 1000.0,
        "min_ms": min(times) * 1000.0,
        "runs": len(times),
        "value": [float(v) for v in value] if isinstance(value, tuple) else None,
    }


def _child_kl(spec: Result) -> Result:
    from onnxq.calibration.histogram import HistogramObserver
    from onnxq.calibration.methods import entropy_range, mse_range, percentile_range
    from onnxq.config import Scheme

    rng = np.random.default_rng(SEED)
    values = rng.standard_t(3, size=KL_VALUES).astype(np.float32)
    observer = HistogramObserver(BINS)
    for chunk in np.array_split(values, 16):
        observer.update(chunk)
    hist = observer.result()
    mag = hist.magnitude()
    occupied = int(np.nonzero(mag)[0][-1]) + 1
    levels = 2 ** (8 - 1)
    out: Result = {
        "values": KL_VALUES,
        "onnxq_grid_bins": int(hist.counts.size),
        "onnxq_abs_bins": occupied,
        "onnxq_candidates": occupied - levels + 1,
        "onnxq_entropy": _median_ms(lambda: entropy_range(hist, levels=levels), KL_RUNS),
        "onnxq_percentile": _median_ms(
            lambda: percentile_range(hist, PERCENTILE, symmetric=False), KL_RUNS
        ),
        "onnxq_mse": _median_ms(
            lambda: mse_range(hist, Scheme.ASYM.qtype(8), symmetric=False), KL_RUNS
        ),
    }
    collector = ort_calib.HistogramCollector(
        method="entropy",
        symmetric=False,
        num_bins=BINS,
        num_quantized_bins=QUANTIZED_BINS,
        percentile=PERCENTILE,
        scenario="same",
    )
    collector.collect({"t": values})  # one batch: exactly BINS bins on [-max|x|, max|x|]
    histogram = collector.histogram_dict["t"]
    out["ort_bins"] = int(histogram[0].size)
    out["ort_candidates"] = int(histogram[0].size // 2 - QUANTIZED_BINS // 2 + 1)
    out["ort_entropy"] = _median_ms(
        lambda: collector.get_entropy_threshold(histogram, QUANTIZED_BINS), KL_RUNS, budget_s=30.0
    )
    return out


def _child_prep(spec: Result) -> Result:
    import onnxq.stages.prepare as prep_mod
    from onnxq.graph.activations import candidate_tensors
    from onnxq.graph.outputs import with_outputs
    from onnxq.stages.prepare import prepare

    timings = _Timings()
    for name in (
        "constants_to_initializers",
        "upgrade_opset",
        "optimize_model",
        "name_nodes",
        "infer_shapes",
    ):
        setattr(prep_mod, name, timings.wrap(name, getattr(prep_mod, name)))
    model = onnx.load(spec["model"])
    onnxq_runs: list[Result] = []
    for _ in range(spec["repeats"]):
        timings.seconds.clear()
        t0 = time.perf_counter()
        prepared = prepare(model)
        t1 = time.perf_counter()
        tensors = candidate_tensors(prepared.model)
        t2 = time.perf_counter()
        with_outputs(prepared.model, tensors)
        t3 = time.perf_counter()
        onnxq_runs.append(
            {
                "total_s": t3 - t0,
                "prepare_s": t1 - t0,
                "candidates_s": t2 - t1,
                "outputs_s": t3 - t2,
                "tensors": len(tensors),
                "steps": dict(timings.seconds),
            }
        )
    _install_ort_threads(THREADS)
    ort_runs: list[Result] = []
    work = Path(spec["work"])
    for i in range(spec["repeats"]):
        aug = work / f"prep_augmented_{i}.onnx"
        t0 = time.perf_counter()
        calibrator = ort_calib.MinMaxCalibrater(Path(spec["model"]), None, str(aug))
        t1 = time.perf_counter()
        calibrator.augment_graph()
        t2 = time.perf_counter()
        calibrator.create_inference_session()
        t3 = time.perf_counter()
        ort_runs.append(
            {
                "total_s": t3 - t0,
                "load_s": t1 - t0,
                "augment_s": t2 - t1,
                "session_s": t3 - t2,
                "nodes_after": len(calibrator.model.graph.node),
            }
        )
        del calibrator
        aug.unlink(missing_ok=True)
        if t3 - t0 > 5.0:  # slow enough that one run says it
            break

    def med(runs: list[Result]) -> Result:
        runs = sorted(runs, key=lambda r: r["total_s"])
        return runs[len(runs) // 2]

    return {
        "nodes": len(model.graph.node),
        "onnxq": med(onnxq_runs),
        "onnxq_runs": len(onnxq_runs),
        "ort": med(ort_runs),
        "ort_runs": len(ort_runs),
    }


CHILDREN: dict[str, Callable[[Result], Result]] = {
    "onnxq": _child_onnxq,
    "ort": _child_ort,
    "forward": _child_forward,
    "kl": _child_kl,
    "prep": _child_prep,
}


def child_main(spec: Result) -> None:
    """Run one measurement and print its JSON result on stdout after ``MARKER``."""
    limit = int(spec.get("mem_limit_gb", 16) * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    ort.set_default_logger_severity(3)
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # onnxruntime's calibrators print
            result: Result = {"ok": True, **CHILDREN[spec["kind"]](spec)}
    except MemoryError as exc:
        result = {"ok": False, "error": f"MemoryError ({exc})".replace(" ()", "")}
    except Exception as exc:  # recorded, never fatal to the benchmark
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        result = {"ok": False, "error": f"{type(exc).__name__}: {first}"[:300]}
    result["peak_mb"] = _peak_mb()
    result["load1"] = os.getloadavg()[0]
    out.write(MARKER + json.dumps(result) + "\n")
    out.flush()


# --------------------------------------------------------------------------- parent side


def _busy_cpu_s() -> float:
    """CPU seconds all processes on the machine have used since boot (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class _Background:
    """CPU use of other processes, and a bounded wait for the machine to be quiet."""

    def __init__(self) -> None:
        self.waited_s = 0.0

    def wait_for_quiet(self) -> float:
        """Wait until other processes use under ``QUIET_CORES`` over 1 s (at most
        ``QUIET_WAIT_S`` now and ``QUIET_BUDGET_S`` in all); the last measured use."""
        start = time.perf_counter()
        while True:
            busy, own, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
            time.sleep(1.0)
            cores = (_busy_cpu_s() - busy - (_own_cpu_s() - own)) / (time.perf_counter() - t0)
            waited = time.perf_counter() - start
            if (
                not cores > QUIET_CORES
                or waited >= QUIET_WAIT_S
                or self.waited_s + waited >= QUIET_BUDGET_S
            ):
                self.waited_s += waited
                return cores


BACKGROUND = _Background()


def run_child(spec: Result, timeout: float) -> Result:
    """Run ``spec`` in a fresh interpreter; a crash or timeout becomes ``ok: False``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    BACKGROUND.wait_for_quiet()
    busy, own = _busy_cpu_s(), _own_cpu_s()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s", "wall_s": timeout}
    wall = time.perf_counter() - start
    bg = max(0.0, (_busy_cpu_s() - busy - (_own_cpu_s() - own)) / wall)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return {**json.loads(line[len(MARKER) :]), "wall_s": wall, "bg_cores": bg}
    if proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode}"
        if proc.returncode == -9:
            reason += " (out of memory?)"
    else:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        reason = f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"
    return {"ok": False, "error": reason[:300], "wall_s": wall, "bg_cores": bg}


def _describe(result: Result) -> str:
    if not result["ok"]:
        return f"FAILED {result['error']}"
    parts = [f"{result['time_s']:.3f} s" if "time_s" in result else ""]
    parts.append(f"peak {result['peak_mb']:.0f} MiB")
    parts.append(f"background {result.get('bg_cores', math.nan):.2f} cores")
    return ", ".join(p for p in parts if p)


def make_data(folder: Path, model: str, n: int) -> Path:
    """``n`` random-normal samples for ``model`` (seeded by model and n) in one ``.npz``."""
    name, shape = input_shape(model)
    rng = np.random.default_rng([SEED, MODELS.index(model), n])
    path = folder / f"{model}_{n}.npz"
    savez = cast(Callable[..., None], np.savez)
    savez(path, **{name: rng.standard_normal((n, *shape), dtype=np.float32)})
    return path


def run_calibration(
    folder: Path, models: Sequence[str], sizes: Sequence[int], timeout: float, mem_gb: float
) -> list[Result]:
    builders: dict[str, Callable[[], onnx.ModelProto]] = {"conv16": conv16, "encoder": encoder}
    rows: list[Result] = []
    for model in models:
        path = save_model(builders[model](), folder, model)
        for n in sizes:
            data = make_data(folder, model, n)
            work = folder / f"work_{model}_{n}"
            work.mkdir(exist_ok=True)
            base = {"model": str(path), "data": str(data), "work": str(work)}
            jobs: list[tuple[str, str]] = [("forward", "-")]
            jobs += [("onnxq", m) for m in ONNXQ_METHODS]
            jobs += [("ort", m) for m in ORT_METHODS]
            for tool, method in jobs:
                spec = {**base, "kind": tool, "method": method, "mem_limit_gb": mem_gb}
                result = run_child(spec, timeout)
                rows.append({"model": model, "n": n, "tool": tool, "method": method, **result})
                print(f"  {model:8s} N={n:<4d} {tool:8s} {method:10s} {_describe(result)}")
    return rows


def run_prep(
    folder: Path, sizes: Sequence[int], repeats: int, timeout: float, mem_gb: float
) -> list[Result]:
    rows: list[Result] = []
    for n in sizes:
        path = save_model(big_graph(n), folder, f"big_graph_{n}")
        spec = {
            "kind": "prep",
            "model": str(path),
            "work": str(folder),
            "repeats": repeats,
            "mem_limit_gb": mem_gb,
        }
        result = run_child(spec, timeout)
        rows.append({"n": n, **result})
        if result["ok"]:
            print(
                f"  big_graph {n:5d} nodes: onnxq {result['onnxq']['total_s'] * 1000:.0f} ms, "
                f"onnxruntime create_calibrator {result['ort']['total_s'] * 1000:.0f} ms"
            )
        else:
            print(f"  big_graph {n:5d} nodes: FAILED {result['error']}")
    return rows


def machine_info() -> Result:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = float("nan")
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 2**20
                break
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "onnxq"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit = head + (" (onnxq/ has uncommitted changes)" if dirty else "")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "onnxq": onnxq.__version__,
        "commit": commit,
    }


# --------------------------------------------------------------------------- report


def _fmt_s(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _fmt_ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×"


def _status(value: float | None, limit: float) -> str:
    """``met`` or how far above an upper ``limit`` the value is."""
    if value is None or not math.isfinite(value):
        return "not measured"
    if value <= limit:
        return "**met**"
    return f"**missed** by {value / limit:.2f}× (limit {limit:g})"


class _Index:
    """Calibration rows by (model, N, tool, method)."""

    def __init__(self, rows: list[Result]) -> None:
        self.rows = {(r["model"], r["n"], r["tool"], r["method"]): r for r in rows}
        self.models = list(dict.fromkeys(r["model"] for r in rows))
        self.sizes = sorted({r["n"] for r in rows})

    def get(self, model: str, n: int, tool: str, method: str) -> Result | None:
        row = self.rows.get((model, n, tool, method))
        return row if row is not None and row["ok"] else None

    def value(self, model: str, n: int, tool: str, method: str, key: str) -> float | None:
        row = self.get(model, n, tool, method)
        return None if row is None else float(row[key])

    def clean(self, model: str, n: int, *keys: tuple[str, str]) -> bool:
        """Whether every child (tool, method) ran while others used ≤ ``BUSY_CORES``."""
        for tool, method in keys:
            row = self.rows.get((model, n, tool, method))
            if row is not None and row.get("bg_cores", 0.0) > BUSY_CORES:
                return False
        return True

    def background(self, model: str, n: int, tool: str, method: str) -> str:
        """Cores other processes used while that child ran, formatted."""
        row = self.rows.get((model, n, tool, method))
        return "–" if row is None or "bg_cores" not in row else f"{row['bg_cores']:.1f}"

    def delta_mb(self, model: str, n: int, tool: str, method: str) -> float | None:
        """Peak RSS above the child's baseline before the measured calls."""
        row = self.get(model, n, tool, method)
        return None if row is None else float(row["peak_mb"] - row["base_mb"])

    def ratio(
        self, a: tuple[str, str, str], b: tuple[str, str, str], model: str, n: int
    ) -> float | None:
        """``a`` over ``b``, each (tool, method, key)."""
        x = self.value(model, n, a[0], a[1], a[2])
        y = self.value(model, n, b[0], b[1], b[2])
        return None if x is None or y is None or y == 0 else x / y


def _cell(index: _Index, model: str, n: int, tool: str, method: str, key: str) -> str:
    row = index.rows.get((model, n, tool, method))
    if row is None:
        return "n/a"
    if not row["ok"]:
        short = "timeout" if "timeout" in row["error"] else "failed"
        return f"{short}†"
    val = float(row[key])
    if key != "time_s":
        return f"{val:.0f}"
    return _fmt_s(val) + ("" if index.clean(model, n, (tool, method)) else "‡")


def _flag(index: _Index, model: str, n: int, *keys: tuple[str, str]) -> str:
    """``‡`` when a time ratio involves a child that ran under background load."""
    found = [index.rows.get((model, n, t, m)) for t, m in keys]
    if any(r is None or not r["ok"] for r in found):
        return ""
    return "" if index.clean(model, n, *keys) else "‡"


def calibration_tables(index: _Index) -> list[str]:
    out = [
        "### Calibration: onnxq vs onnxruntime vs a float forward pass",
        "",
        "Times are seconds (best of 1–7 runs in the same child), peaks are the child's peak "
        "RSS in MiB (`ru_maxrss`; the interpreter with numpy, onnx, onnxruntime and onnxq "
        "imported is about 75 MiB of it). onnxq time is the whole `onnxq.calibrate` call; "
        "ORT time is `collect_data` + `compute_data` only (see the setup column below). "
        '"fwd" is the float forward pass over the same data. ‡ marks a time, or a time '
        f"ratio, taken while other processes used more than {BUSY_CORES:g} of the 2 cores "
        "(see the last column): contention inflates a 2-thread run several times over, "
        "so such values say little.",
        "",
        "| model | N | method | onnxq s | onnxq MiB | ORT s | ORT MiB | time onnxq/ORT "
        "| mem onnxq/ORT | onnxq/fwd time | onnxq peak / onnxq-minmax peak "
        "| bg cores onnxq / ORT / fwd |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model in index.models:
        for n in index.sizes:
            for method in ONNXQ_METHODS:
                ort_cells = (
                    (
                        _cell(index, model, n, "ort", method, "time_s"),
                        _cell(index, model, n, "ort", method, "peak_mb"),
                    )
                    if method in ORT_METHODS
                    else ("n/a", "n/a")
                )
                cells = [
                    model,
                    str(n),
                    method,
                    _cell(index, model, n, "onnxq", method, "time_s"),
                    _cell(index, model, n, "onnxq", method, "peak_mb"),
                    *ort_cells,
                    _fmt_ratio(
                        index.ratio(
                            ("onnxq", method, "time_s"), ("ort", method, "time_s"), model, n
                        )
                    )
                    + _flag(index, model, n, ("onnxq", method), ("ort", method)),
                    _fmt_ratio(
                        index.ratio(
                            ("onnxq", method, "peak_mb"), ("ort", method, "peak_mb"), model, n
                        )
                    ),
                    _fmt_ratio(
                        index.ratio(
                            ("onnxq", method, "time_s"), ("forward", "-", "time_s"), model, n
                        )
                    )
                    + _flag(index, model, n, ("onnxq", method), ("forward", "-")),
                    _fmt_ratio(
                        index.ratio(
                            ("onnxq", method, "peak_mb"), ("onnxq", "minmax", "peak_mb"), model, n
                        )
                    ),
                    " / ".join(
                        index.background(model, n, tool, m)
                        for tool, m in (("onnxq", method), ("ort", method), ("forward", "-"))
                    ),
                ]
                out.append("| " + " | ".join(cells) + " |")
    failures = [r for r in index.rows.values() if not r["ok"]]
    if failures:
        out += ["", "† failures:", ""]
        out += [
            f"- {r['model']} N={r['n']} {r['tool']} {r['method']}: {r['error']}" for r in failures
        ]
    out += [
        "",
        "Float forward pass, onnxruntime's calibrator setup (`create_calibrator`: shape "
        "inference, augmentation, session; not in the ORT times above) and the tensors "
        "each tool calibrates:",
        "",
        "| model | N | fwd s | fwd MiB | ORT setup s (minmax / percentile / entropy) "
        "| tensors onnxq / ORT |",
        "|---|---:|---:|---:|---|---|",
    ]
    for model in index.models:
        for n in index.sizes:
            setups = []
            for method in ORT_METHODS:
                row = index.get(model, n, "ort", method)
                setups.append("–" if row is None else _fmt_s(row["setup_s"]))
            q = index.get(model, n, "onnxq", "minmax")
            o = index.get(model, n, "ort", "minmax")
            tensors = f"{q['tensors'] if q else '–'} / {o['tensors'] if o else '–'}"
            out.append(
                f"| {model} | {n} | {_cell(index, model, n, 'forward', '-', 'time_s')} "
                f"| {_cell(index, model, n, 'forward', '-', 'peak_mb')} | {' / '.join(setups)} "
                f"| {tensors} |"
            )
    out += [
        "",
        "Peak RSS above each child's baseline (`ru_maxrss` just before the measured calls: "
        "interpreter and imports; for onnxruntime and the forward pass also the loaded "
        "data), MiB. This isolates what calibration itself holds:",
        "",
        "| model | N | method | onnxq Δ MiB | ORT Δ MiB | Δ onnxq/ORT |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for model in index.models:
        for n in index.sizes:
            for method in ONNXQ_METHODS:
                dq = index.delta_mb(model, n, "onnxq", method)
                do = index.delta_mb(model, n, "ort", method)
                ratio = None if dq is None or do is None or do <= 0 else dq / do
                out.append(
                    f"| {model} | {n} | {method} | {'–' if dq is None else f'{dq:.0f}'} "
                    f"| {'–' if do is None else f'{do:.0f}'} | {_fmt_ratio(ratio)} |"
                )
    out += [
        "",
        "Where onnxq's time goes (the best run; wrapped internals of "
        "`onnxq.calibration.calibrate` and `onnxq.calibration.collect`): setup = loading, "
        "data validation, `prepare` (of which onnxruntime's basic optimization builds a "
        "session), candidate tensors, and the one-sample probe that sizes the batches "
        "(it makes the calibration session: extra outputs + session); run = `session.run` "
        "over the batches; observe = observer updates (min/max, the sampled quality "
        "histogram, or the method's histogram); finish = the range search and the "
        "quality estimate.",
        "",
        "| model | N | method | total s | setup s | (prepare s) | (session s) | run s "
        "| observe s | finish s | (run+observe+finish)/fwd |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in index.models:
        for n in index.sizes:
            fwd = index.value(model, n, "forward", "-", "time_s")
            for method in ONNXQ_METHODS:
                row = index.get(model, n, "onnxq", method)
                if row is None:
                    continue
                s = row["split"]
                stream = s["run"] + s["observe"] + s["finish"]
                vals = [row["time_s"], s["setup"], s["prepare"], s["session"], s["run"]]
                vals += [s["observe"], s["finish"]]
                out.append(
                    f"| {model} | {n} | {method} | "
                    + " | ".join(_fmt_s(v) for v in vals)
                    + f" | {_fmt_ratio(stream / fwd if fwd else None)} |"
                )
    return out


def kl_section(kl: Result | None) -> list[str]:
    out = ["### KL (entropy) threshold search, one tensor, 2048 bins", ""]
    if kl is None:
        return [*out, "not run", ""]
    if not kl["ok"]:
        return [*out, f"failed: {kl['error']}", ""]
    out += [
        f"{kl['values']:,} Student-t (3 d.o.f.) float32 values. onnxq: `HistogramObserver(2048)` "
        f"(grid of {kl['onnxq_grid_bins']} bins, |x| spans {kl['onnxq_abs_bins']} of them, "
        f"{kl['onnxq_candidates']} candidate thresholds), `entropy_range(hist, levels=128)`. "
        f"onnxruntime: `HistogramCollector.get_entropy_threshold` on its {kl['ort_bins']}-bin "
        f"histogram of the same values ({kl['ort_candidates']} candidates, 128 quantized bins).",
        "",
        f"Other processes used {kl.get('bg_cores', math.nan):.1f} cores during this child.",
        "",
        "| function | median ms per tensor | runs | threshold |",
        "|---|---:|---:|---|",
    ]
    for label, key in (
        ("onnxq `entropy_range`", "onnxq_entropy"),
        ("onnxruntime `get_entropy_threshold`", "ort_entropy"),
        ("onnxq `percentile_range` (for scale)", "onnxq_percentile"),
        ("onnxq `mse_range` (for scale)", "onnxq_mse"),
    ):
        r = kl[key]
        thr = "–" if r["value"] is None else f"[{r['value'][0]:.3g}, {r['value'][1]:.3g}]"
        out.append(f"| {label} | {r['median_ms']:.2f} | {r['runs']} | {thr} |")
    return [*out, ""]


def _growth_exponent(ns: Sequence[int], ts: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(nodes): 1 is linear, 2 quadratic."""
    x = np.log(np.asarray(ns, float))
    y = np.log(np.asarray(ts, float))
    return float(np.polyfit(x, y, 1)[0])


def prep_section(prep: list[Result]) -> tuple[list[str], Result]:
    out = [
        "### Preparation for calibration vs graph size (`big_graph`)",
        "",
        "A chain of cheap nodes (Add/Mul with per-channel constants, Conv 1x1 every 50th) on "
        "[1, 8, 8, 8]. onnxq: `prepare(model)` + `candidate_tensors` + `with_outputs` (no "
        "calibration session; `prepare` includes onnxruntime's basic optimization, which "
        "builds one session). onnxruntime: `create_calibrator(MinMax)` = "
        "`MinMaxCalibrater(...)` (shape inference via a file) + `augment_graph` (ReduceMin/"
        "ReduceMax per tensor) + session creation. Median of up to 3 runs, ms.",
        "",
        "| nodes | onnxq total | prepare | (optimize) | (infer_shapes) | candidates "
        "| with_outputs | µs/node | ORT create_calibrator | (load) | (augment) | (session) "
        "| µs/node | bg cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = [r for r in prep if r["ok"]]
    for r in prep:
        if not r["ok"]:
            out.append(f"| {r['n']} | failed: {r['error']} |" + " |" * 12)
            continue
        q, o = r["onnxq"], r["ort"]
        ms = [q["total_s"], q["prepare_s"], q["steps"].get("optimize_model", 0.0)]
        ms += [q["steps"].get("infer_shapes", 0.0), q["candidates_s"], q["outputs_s"]]
        cells = [f"{v * 1000:.0f}" for v in ms]
        cells.append(f"{q['total_s'] / r['nodes'] * 1e6:.0f}")
        cells += [f"{v * 1000:.0f}" for v in (o["total_s"], o["load_s"], o["augment_s"])]
        cells += [f"{o['session_s'] * 1000:.0f}", f"{o['total_s'] / r['nodes'] * 1e6:.0f}"]
        cells.append(f"{r.get('bg_cores', math.nan):.1f}")
        out.append(f"| {r['nodes']} | " + " | ".join(cells) + " |")
    summary: Result = {}
    if len(ok) >= 2:
        ns = [r["nodes"] for r in ok]
        summary = {
            "onnxq_exp": _growth_exponent(ns, [r["onnxq"]["total_s"] for r in ok]),
            "ort_exp": _growth_exponent(ns, [r["ort"]["total_s"] for r in ok]),
            "ort_aug_exp": _growth_exponent(ns, [r["ort"]["augment_s"] for r in ok]),
            "largest": ok[-1]["nodes"],
            "bg_max": max(r.get("bg_cores", 0.0) for r in ok),
            "largest_s": ok[-1]["onnxq"]["total_s"],
        }
        out += [
            "",
            "Growth exponent (slope of log time vs log nodes; 1 = linear, 2 = quadratic): "
            f"onnxq {summary['onnxq_exp']:.2f}, onnxruntime create_calibrator "
            f"{summary['ort_exp']:.2f} (its augment_graph alone {summary['ort_aug_exp']:.2f}).",
        ]
    return [*out, ""], summary


def _busy_note(cores: float) -> str:
    if cores <= BUSY_CORES:
        return ""
    return f" ‡ (others used up to {cores:.1f} cores meanwhile)"


def targets_section(index: _Index, kl: Result | None, prep: Result) -> list[str]:
    out = [
        "### Targets",
        "",
        "| target | scope | measured | status |",
        "|---|---|---|---|",
    ]

    def add(
        target: str,
        scope: str,
        values: dict[int, float | None],
        limit: float,
        extra: str = "",
        clean: dict[int, bool] | None = None,
    ) -> None:
        """One row; with ``clean``, values flagged unclean (‡) do not decide the status."""
        got = {n: v for n, v in values.items() if v is not None}
        ok = {n: clean is None or clean.get(n, True) for n in got}
        measured = (
            ", ".join(f"N={n}: {_fmt_ratio(v)}{'' if ok[n] else '‡'}" for n, v in got.items())
            or "–"
        )
        measured += extra
        missing = [n for n, v in values.items() if v is None]
        if missing:
            measured += f" (no value at N={', '.join(map(str, missing))})"
        worst = max(got.values()) if got else None
        kept = [v for n, v in got.items() if ok[n]]
        if len(kept) == len(got):
            status = _status(worst, limit)
        elif kept and max(kept) == worst:
            status = f"{_status(worst, limit)} (worst value has no ‡)"
        elif kept:
            status = f"{_status(max(kept), limit)} on the values without ‡ (with them: "
            status += f"{_status(worst, limit).replace('**', '')})"
        else:
            status = f"unreliable, every value ‡ (as measured: {_status(worst, limit)})"
        out.append(f"| {target} | {scope} | {measured} | {status} |")

    mem_n = 64 if 64 in index.sizes else index.sizes[-1]
    for model in index.models:
        for method in ("percentile", "entropy", "mse"):
            refs = [method] if method in ORT_METHODS else ["percentile", "entropy"]
            values: dict[int, float | None] = {}
            x = index.value(model, mem_n, "onnxq", method, "peak_mb")
            ys = [index.value(model, mem_n, "ort", m, "peak_mb") for m in refs]
            known = [y for y in ys if y is not None]
            values[mem_n] = None if x is None or not known else x / min(known)
            ref = f"ORT {method}" if len(refs) == 1 else "the smaller of ORT percentile/entropy"
            dq = index.delta_mb(model, mem_n, "onnxq", method)
            dos = [d for d in (index.delta_mb(model, mem_n, "ort", m) for m in refs) if d]
            extra = (
                f"; above baseline {dq:.0f} vs {min(dos):.0f} MiB = {_fmt_ratio(dq / min(dos))}"
                if dq is not None and dos
                else ""
            )
            add(
                "peak memory ≤ 0.1× onnxruntime",
                f"{model} {method} vs {ref}",
                values,
                0.1,
                extra,
            )
    for model in index.models:
        for method in ("percentile", "entropy", "mse"):
            values = {
                n: index.ratio(
                    ("onnxq", method, "peak_mb"), ("onnxq", "minmax", "peak_mb"), model, n
                )
                for n in index.sizes
            }
            add(
                "peak memory flat in N: ≤ 1.2× onnxq min/max peak", f"{model} {method}", values, 1.2
            )
    for model in index.models:
        for method, limit in (("percentile", 0.3), ("entropy", 0.3), ("minmax", 1.0)):
            values = {
                n: index.ratio(("onnxq", method, "time_s"), ("ort", method, "time_s"), model, n)
                for n in index.sizes
            }
            clean = {n: index.clean(model, n, ("onnxq", method), ("ort", method)) for n in values}
            add(
                f"wall time ≤ {limit:g}× onnxruntime",
                f"{model} {method}",
                values,
                limit,
                clean=clean,
            )
    for model in index.models:
        for method in ONNXQ_METHODS:
            values = {
                n: index.ratio(("onnxq", method, "time_s"), ("forward", "-", "time_s"), model, n)
                for n in index.sizes
            }
            clean = {n: index.clean(model, n, ("onnxq", method), ("forward", "-")) for n in values}
            add(
                "wall time ≤ 1.5× float forward pass",
                f"{model} {method}",
                values,
                1.5,
                clean=clean,
            )
    if kl is not None and kl["ok"]:
        ms = kl["onnxq_entropy"]["median_ms"]
        busy = _busy_note(kl.get("bg_cores", 0.0))
        out.append(
            f"| KL search ≤ 10 ms per tensor at 2048 bins | `entropy_range` | {ms:.2f} ms{busy} "
            f"(onnxruntime: {kl['ort_entropy']['median_ms']:.0f} ms) | {_status(ms, 10.0)} |"
        )
    else:
        out.append("| KL search ≤ 10 ms per tensor at 2048 bins | – | – | not measured |")
    if prep:
        exp = prep["onnxq_exp"]
        busy = _busy_note(prep["bg_max"])
        out.append(
            "| preparation linear in graph size | big_graph 500–4000 nodes | growth exponent "
            f"{exp:.2f}{busy} | {_status(exp, 1.15)} (exponent ≤ 1.15 counted as linear) |"
        )
        out.append(
            f"| preparation of a {prep['largest']}-node model < 1 s | big_graph "
            f"| {prep['largest_s'] * 1000:.0f} ms{busy} | {_status(prep['largest_s'], 1.0)} |"
        )
    else:
        out.append("| preparation linear, 4000 nodes < 1 s | – | – | not measured |")
    out += [
        "",
        'Ratios are worst-case over the N listed; "missed by k×" means the worst value is '
        "k times the limit. Peak memory is the whole child process (interpreter and "
        "libraries included), as the targets are stated.",
        "",
    ]
    return out


def _all_children(results: Result) -> list[Result]:
    kl = [results["kl"]] if results.get("kl") else []
    return [*results.get("calibration", []), *kl, *results.get("prep", [])]


def render(results: Result) -> str:
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}` (run from the repository root; "
        f"took {meta['wall_s'] / 60:.1f} min)"
        + (
            f"; tables re-rendered from its saved results with `--render` on {meta['rendered']}."
            if meta.get("rendered")
            else "."
        ),
        "",
        f"- date: {meta['date']}",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']:.1f} GiB RAM, {m['os']}",
        f"- python {m['python']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}, "
        f"numpy {m['numpy']}, onnxq {m['onnxq']} at commit {m['commit']}",
        f"- settings: batch size {BATCH}, {THREADS} intra-op threads, {BINS} bins, "
        f"percentile {PERCENTILE}, data N random-normal samples (seed {SEED}); one fresh "
        f"child process per measurement, timeout {meta['timeout_s']:.0f} s, address-space "
        f"limit {meta['mem_limit_gb']:g} GiB",
        "- models (`bench/models.py`): conv16 = input [N,3,32,32], 16 × (Conv 3x3 32ch + Relu), "
        "GlobalAveragePool, Flatten, Gemm; encoder = input [N,64,256], 4 BERT-like layers "
        "(hidden 256, 4 heads, FFN 1024, Erf GELU, LayerNormalization)",
        "- onnxruntime calibrators use their defaults otherwise: MinMax and Entropy "
        "asymmetric, Percentile symmetric (histogram of |x|); their session is created "
        "with optimizations disabled (as onnxruntime does) and 2 intra-op threads (patched "
        "in: onnxruntime offers no option for it). onnxq's ranges are asymmetric (uint8).",
    ]
    bgs = sorted(r["bg_cores"] for r in _all_children(results) if "bg_cores" in r)
    if bgs:
        busy = sum(b > 0.5 for b in bgs)
        lines.append(
            "- machine sharing: other processes used a median of "
            f"{statistics.median(bgs):.2f} and at most {bgs[-1]:.2f} of the {m['nproc']} cores "
            f"while the children ran ({busy} of {len(bgs)} children saw more than half a "
            f"core); the run waited {meta.get('quiet_wait_s', 0.0):.0f} s in all for quiet. "
            "Times are the best of the repeated runs to lessen that noise; the `bg cores` "
            "column gives the background use during each child (onnxq / ORT / forward)"
        )
    lines.append("")
    index = _Index(results["calibration"])
    if index.rows:
        lines += calibration_tables(index)
        lines.append("")
    kl = results.get("kl")
    lines += kl_section(kl)
    prep_summary: Result = {}
    if results.get("prep"):
        prep_lines, prep_summary = prep_section(results["prep"])
        lines += prep_lines
    lines += targets_section(index, kl, prep_summary)
    return "\n".join(lines)


def merge_section(existing: str, title: str, body: str) -> str:
    """``existing`` markdown with the section ``## title`` replaced by ``body`` (appended
    if absent); the preamble and every other ``## `` section are kept as they are."""
    chunks: list[list[str]] = [[]]
    fenced = False
    for line in existing.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            chunks.append([line])
        else:
            chunks[-1].append(line)
    preamble = "\n".join(chunks[0]).strip()
    sections = ["\n".join(c).strip() for c in chunks[1:]]
    new = f"## {title}\n\n{body.strip()}"
    heading = re.compile(rf"^## {re.escape(title)}\s*$", re.MULTILINE)
    replaced = False
    for i, section in enumerate(sections):
        if heading.match(section.splitlines()[0]):
            if not replaced:
                sections[i] = new
                replaced = True
            else:
                sections[i] = ""
    if not replaced:
        sections.append(new)
    parts = [preamble or "# Benchmarks", *[s for s in sections if s]]
    return "\n\n".join(parts) + "\n"


def write_markdown(results: Result, out: Path) -> None:
    existing = out.read_text() if out.exists() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(merge_section(existing, SECTION, render(results)))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="N in {16, 64} only")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--render", type=Path, help="only render --out from a --json file")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    p.add_argument("--sizes", help="comma-separated N values (overrides --quick)")
    p.add_argument("--sections", default="calib,kl,prep", help="subset of calib,kl,prep")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    p.add_argument("--mem-limit-gb", type=float, default=16.0, help="RLIMIT_AS per child")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    if args.render is not None:
        saved: Result = json.loads(args.render.read_text())
        saved["meta"]["rendered"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        write_markdown(saved, args.out)
        print(f"wrote {args.out}")
        return
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    models = [m for m in args.models.split(",") if m]
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else list(QUICK_SIZES if args.quick else SIZES)
    )
    sections = set(args.sections.split(","))
    results: Result = {"calibration": [], "kl": None, "prep": []}
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        folder = Path(tmp)
        if "calib" in sections:
            print(f"calibration: models {models}, N {sizes}")
            results["calibration"] = run_calibration(
                folder, models, sizes, args.timeout, args.mem_limit_gb
            )
        if "kl" in sections:
            print("KL search microbenchmark")
            results["kl"] = run_child(
                {"kind": "kl", "mem_limit_gb": args.mem_limit_gb}, args.timeout
            )
            print(f"  {_describe(results['kl'])}")
        if "prep" in sections:
            print("preparation scaling")
            results["prep"] = run_prep(
                folder, PREP_SIZES, 1 if args.quick else 3, args.timeout, args.mem_limit_gb
            )
    results["meta"] = {
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "wall_s": time.perf_counter() - start,
        "timeout_s": args.timeout,
        "mem_limit_gb": args.mem_limit_gb,
        "load1": [load_start, os.getloadavg()[0]],
        "quiet_wait_s": BACKGROUND.waited_s,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    write_markdown(results, args.out)
    print(f"wrote {args.out} in {results['meta']['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
