"""onnxruntime sessions: running models, saving optimized graphs, timing.

This is the only module that imports onnxruntime. Errors from it become
:class:`RuntimeFailure` with a one-line message.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxq.errors import RuntimeFailure
from onnxq.graph.external import (
    PROTOBUF_LIMIT,
    external_ref,
    inline,
    is_external,
    relocate,
    uses_external_data,
)
from onnxq.graph.outputs import with_outputs

__all__ = [
    "OptLevel",
    "Runner",
    "Spooled",
    "loadable",
    "op_counts",
    "measure_latency",
    "optimize_model",
    "optimized_nodes",
    "optimized_op_types",
    "owned",
    "runtime_version",
]


class OptLevel(str, Enum):
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    @property
    def ort(self) -> ort.GraphOptimizationLevel:
        return {
            OptLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            OptLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            OptLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self]


def runtime_version() -> str:
    return str(ort.__version__)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _options(
    threads: int, level: OptLevel, optimized_path: Path | None, spin: bool, external: bool = False
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = level.ort
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if optimized_path is not None and external:
        # its tensors beside it, so that a graph of any size can be written and read, and
        # its nodes read back without its weights (onnxruntime writes the nodes in another
        # order that way: not for a graph that is used, only for one that is inspected)
        data = optimized_path.with_name(optimized_path.name + ".data")
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data.name
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return opts


def _session_model(model: onnx.ModelProto) -> tuple[Path | None, onnx.ModelProto]:
    """The folder onnxruntime reads external data from, and ``model`` as it loads it.

    onnxruntime reads external data from one folder, by locations relative to it (it
    refuses the absolute locations onnxq pins, and links out of the folder). The folder
    holding most external bytes is that folder; tensors in other files (a rewrite's new
    tensors next to the model's untouched ones, usually small) are put into the proto."""
    by_folder: dict[Path, int] = {}
    for t in model.graph.initializer:
        if is_external(t):
            ref = external_ref(t)
            by_folder[ref.path.parent] = by_folder.get(ref.path.parent, 0) + ref.length
    if not by_folder:
        return None, model
    folder = max(by_folder, key=lambda f: by_folder[f])
    inlined = sum(n for f, n in by_folder.items() if f != folder)
    if inlined > PROTOBUF_LIMIT:
        raise RuntimeFailure(
            f"the model's weights lie in {len(by_folder)} folders and those outside "
            f"'{folder}' pass 2 GB ({inlined / 2**30:.1f} GiB), more than onnxruntime can take "
            "inline: keep a model's data files in its own folder"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if not is_external(t):
            continue
        ref = external_ref(t)
        if ref.path.parent == folder:
            relocate(t, ref.path.name)
        else:
            inline(t)
    return folder, out


class Spooled:
    """A serialized model in a private temporary file, for one :class:`Runner` to load
    (onnxruntime reads it from the file: no copy of its bytes in the process while the
    session is made) and remove."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="onnxq-"))
        self.path = self.folder / "model.onnx"
        try:
            self.path.write_bytes(model.SerializeToString())
        except OSError as exc:
            self.remove()
            raise RuntimeFailure(
                f"cannot write a temporary copy of the model to load it in '{self.folder}' "
                f"({exc.strerror or exc}): set TMPDIR to a folder with room"
            ) from exc

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def owned(value: np.ndarray) -> np.ndarray:
    """``value`` as an array that owns its data. onnxruntime returns outputs as views of
    buffers in its session's arena, and one such array kept alive keeps that arena after
    the session is dropped (magika: 40 MB kept for 110 kB of outputs): copy what is kept
    past a run."""
    return np.array(value, copy=True)


def loadable(model: onnx.ModelProto) -> onnx.ModelProto | Spooled:
    """What to give :class:`Runner` for a model the caller gives up (a fresh copy):
    written to a temporary file, so that neither the proto nor its bytes are alive while
    onnxruntime loads it (a proto beside its bytes and onnxruntime's copy was the peak of
    loading: MiniLM 90 MB more; the bytes beside onnxruntime's copy, the peak of the
    output check's simulation: 96 MB); a model with external data stays a proto (the
    Runner resolves its files)."""
    return model if uses_external_data(model) else Spooled(model)


class Runner:
    """One onnxruntime CPU session over a model, with the output names to fetch."""

    def __init__(
        self,
        model: onnx.ModelProto | bytes | Spooled,
        *,
        threads: int = 0,
        level: OptLevel = OptLevel.ALL,
        what: str = "model",
        spin: bool = True,
        record_graph: bool = False,
        prepack: bool = True,
        _optimized_path: Path | None = None,
    ) -> None:
        """``model`` may be serialized already, as bytes or in a :class:`Spooled` file
        (removed once loaded; see :func:`loadable`), so the caller can drop the proto; a
        model whose initializers are in external files must be given as the proto (its
        pinned locations are rewritten for onnxruntime, :func:`_session_model`).

        ``spin=False``: the worker threads sleep between runs instead of spinning. Needed
        where two sessions alternate (latency): a spinning pool of the one steals the
        cores of the other (measured on 2 cores: float 7.45 vs 2.48 ms for the same model
        run after another session).

        ``record_graph``: keep (name, op type) of every node onnxruntime runs after its
        optimizations (:attr:`optimized_nodes`), read from the optimized graph it writes
        to a private temporary folder at load, so one session serves running and
        inspecting the model.

        ``prepack=False``: kernels keep the weights as stored instead of a second, packed
        copy (onnxruntime's ``session.disable_prepacking``): a session that is loaded to be
        checked rather than timed needs about half the memory (measured: 595 vs 843 MB for
        a 503 MB 4-bit model); runs are slower."""
        self.what = what
        self._folder: Path | None = None  # where the session reads external data
        self._prepack = prepack
        self._settings = (threads, level, spin)  # to load it again (reload)
        data: bytes | str
        if isinstance(model, Spooled):
            data = str(model.path)
        elif isinstance(model, bytes):
            data = model
        else:
            self._folder, model = _session_model(model)
            data = model.SerializeToString()
        self.optimized_nodes: list[tuple[str, str]] | None = None
        try:
            if record_graph and _optimized_path is None:
                with tempfile.TemporaryDirectory(prefix="onnxq-") as tmp:
                    path = Path(tmp) / "optimized.onnx"
                    # its weights beside it, not read back (MiniLM: 86 MB parsed per
                    # session, the peak of loading a candidate)
                    session = self._load(data, threads, level, path, spin, beside=True)
                    written = onnx.load(str(path), load_external_data=False)
                    self.optimized_nodes = _node_kinds(written)
            else:
                session = self._load(data, threads, level, _optimized_path, spin)
        finally:
            if isinstance(model, Spooled):
                model.remove()
        self._session: ort.InferenceSession | None = session
        self.output_names: tuple[str, ...] = tuple(o.name for o in session.get_outputs())

    def unload(self) -> None:
        """Drop the onnxruntime session (its weights, packed copies and arena) while
        another stage needs the memory; :meth:`reload` loads it again."""
        self._session = None

    def reload(self, model: onnx.ModelProto) -> None:
        """Load ``model`` (the one this runner was made of, or it before extra outputs
        were added: they are added again) after :meth:`unload`."""
        if self._session is not None:
            return
        present = {o.name for o in model.graph.output}
        missing = [n for n in self.output_names if n not in present]
        if missing:
            model = with_outputs(model, missing)
        threads, level, spin = self._settings
        if self._folder is not None:
            self._folder, model = _session_model(model)
            self._session = self._load(model.SerializeToString(), threads, level, None, spin)
            return
        spooled = Spooled(model)  # loaded from a file, as a new session is (loadable)
        try:
            self._session = self._load(str(spooled.path), threads, level, None, spin)
        finally:
            spooled.remove()

    def _load(
        self,
        data: bytes | str,
        threads: int,
        level: OptLevel,
        path: Path | None,
        spin: bool,
        *,
        beside: bool = False,
    ) -> ort.InferenceSession:
        """A session of ``data`` (the model's bytes or file); ``path``: where it writes
        its optimized graph, the tensors in a file beside it when ``beside`` or the model
        has external data."""
        beside = beside or self._folder is not None
        opts = _options(threads, level, path, spin, external=beside)
        if not self._prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        if self._folder is not None:
            opts.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self._folder)
            )
        try:
            return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many kinds; one message
            raise RuntimeFailure(
                f"onnxruntime cannot load the {self.what}: {_one_line(exc)}"
            ) from exc

    def run(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        if self._session is None:
            raise RuntimeError(f"the session of the {self.what} was unloaded")
        try:
            values = self._session.run(names, dict(feed))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many kinds; one message
            raise RuntimeFailure(
                f"onnxruntime failed to run the {self.what}: {_one_line(exc)}"
            ) from exc
        return dict(zip(names, values, strict=True))


def optimize_model(model: onnx.ModelProto, level: OptLevel = OptLevel.BASIC) -> onnx.ModelProto:
    """The graph onnxruntime makes of ``model`` at ``level`` (written to a private
    temporary folder, read back, removed)."""
    with tempfile.TemporaryDirectory(prefix="onnxq-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        Runner(model, threads=1, level=level, _optimized_path=path)
        return onnx.load(str(path))


def optimized_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, op type) of every node onnxruntime's CPU provider runs after its full
    optimization; op types outside the default domain read ``domain:OpType``. Shows
    which Q/DQ groups were fused into integer kernels and which still run in float."""
    runner = Runner(model, threads=1, level=OptLevel.ALL, record_graph=True, prepack=False)
    return runner.optimized_nodes or []  # read without loading the weights back


def _node_kinds(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [
        (n.name, f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in model.graph.node
    ]


def optimized_op_types(model: onnx.ModelProto) -> Counter[str]:
    """Histogram of :func:`optimized_nodes` op types."""
    return op_counts(optimized_nodes(model))


def op_counts(nodes: Sequence[tuple[str, str]]) -> Counter[str]:
    """How many of the (name, op type) ``nodes`` run each op type."""
    return Counter(op for _, op in nodes)


def measure_latency(
    runners: Sequence[Runner],
    feed: Mapping[str, np.ndarray],
    *,
    warmup: int = 3,
    runs: int = 20,
    block: int = 1,
    settled: Callable[[list[list[float]]], bool] | None = None,
    min_runs: int = 0,
) -> list[float]:
    """Median wall time in milliseconds of one run of each runner on ``feed``.

    Runners alternate, so that drift in machine load hits all alike: one run each in
    turn, or with ``block`` > 1 blocks of that many runs each in turn, every block after
    one untimed run (caches and thread pools warm for the model timed); ``runs`` timed
    runs of each in all (rounded down to whole blocks, at least one). Make the runners
    with ``spin=False`` (see :class:`Runner`) or each waits on the others' threads.

    ``settled``: called with each runner's timed runs so far (ms, in order; a round adds
    ``block`` to each) after each round once every runner has ``min_runs``; True stops the
    timing there (the answer it needs is clear).
    """
    for _ in range(warmup):
        for runner in runners:
            runner.run(feed)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(max(1, runs // block)):
        for i, runner in enumerate(runners):
            if block > 1:
                runner.run(feed)
            for _ in range(block):
                start = time.perf_counter()
                runner.run(feed)
                times[i].append((time.perf_counter() - start) * 1000.0)
        if settled is not None and len(times[0]) >= min_runs:
            if settled(times):
                break
    return [statistics.median(t) for t in times]
