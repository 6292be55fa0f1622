"""Which quantized nodes cost the output the most: each node quantized alone.

On the float model with every quantized node's inputs behind a switch
(:mod:`onnxq.graph.node_switches`), each node is switched on alone and the noise it adds
to the compared outputs (each graph output, or the logits before a Softmax, as the output
check compares) is measured against the float outputs: ``Σ(ref − out)² / Σ ref²`` per
output, the worst output's as SQNR. Quantization noise from different places adds up at
the outputs about as powers add, so a node's share of the summed noise says how much
keeping it float would gain. One session, ``units + 2`` runs per batch (all off: the
float reference; each unit alone; all on: the simulated quantized model).

Measuring each node quantized alone costs as many runs as measuring each kept float alone,
but its numbers do not depend on the other nodes, so they rank and add up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxq.data import Dataset
from onnxq.graph.node_switches import NodeSwitches
from onnxq.graph.outputs import with_outputs
from onnxq.report.metrics import noise_ratio, sqnr_db
from onnxq.runtime import OptLevel, Runner
from onnxq.tuning.check import compared_tensors

__all__ = ["METHOD", "NodeSensitivity", "Sensitivity", "measure_sensitivity"]

METHOD = (
    "each quantized node alone: the float model with only this node reading quantized inputs "
    "(its activations through Q/DQ with the quantized model's scales, its stored weights); "
    "SQNR of the worst compared output against the float model"
)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    noise: float  # worst compared output's Σ(ref − out)² / Σ ref², this node alone
    share: float  # this node's noise / the summed noise of all nodes (worst output)

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(1.0, self.noise)


@dataclass(frozen=True)
class Sensitivity:
    method: str
    samples: int
    outputs: tuple[str, ...]  # the compared tensors
    all_noise: float  # every node quantized (the simulated quantized model), worst output
    nodes: tuple[NodeSensitivity, ...]  # worst first

    @property
    def all_sqnr_db(self) -> float:
        return sqnr_db(1.0, self.all_noise)

    def offenders(self, at_most: int, share: float = 0.5) -> tuple[str, ...]:
        """The fewest worst nodes holding ``share`` of the summed noise (at least one,
        at most ``at_most``): what a recipe should keep float."""
        chosen: list[str] = []
        held = 0.0
        for n in self.nodes:
            if len(chosen) >= at_most or n.noise <= 0 or (chosen and held >= share):
                break
            chosen.append(n.node)
            held += n.share
        return tuple(chosen)


def measure_sensitivity(
    switches: NodeSwitches,
    dataset: Dataset,
    *,
    samples: int,
    batch_size: int,
    threads: int = 0,
    progress: Progress | None = None,
) -> Sensitivity:
    """Rank the units of ``switches`` on the first ``samples`` samples of ``dataset``
    (whole batches)."""
    outputs = compared_tensors(switches.model)[0]
    runner = Runner(
        with_outputs(switches.model, outputs),
        threads=threads,
        level=OptLevel.BASIC,
        what="switchable float model",
    )
    n = len(switches.units)
    noise = np.zeros((n + 1, len(outputs)))  # row n: every unit on
    signal = np.zeros(len(outputs))
    done = 0
    total = min(samples, dataset.num_samples)
    for batch in dataset.batches(batch_size):
        ref = runner.run({**batch.feed, **switches.feed(())}, outputs)
        signal += [np.sum(np.square(ref[o], dtype=np.float64)) for o in outputs]
        for row, active in enumerate([*([i] for i in range(n)), range(n)]):
            out = runner.run({**batch.feed, **switches.feed(set(active))}, outputs)
            noise[row] += [_squared_error(ref[o], out[o]) for o in outputs]
        done += batch.size
        if progress is not None:
            progress("sensitivity", min(done, total), total)
        if done >= total:
            break
    return _ranked(switches, outputs, done, noise, signal)


def _squared_error(ref: np.ndarray, out: np.ndarray) -> float:
    diff = np.asarray(ref, np.float64) - np.asarray(out, np.float64)
    return float(np.sum(diff * diff))


def _ranked(
    switches: NodeSwitches,
    outputs: tuple[str, ...],
    samples: int,
    noise: np.ndarray,
    signal: np.ndarray,
) -> Sensitivity:
    ratios = np.array(
        [
            [noise_ratio(float(s), float(e)) for e, s in zip(row, signal, strict=True)]
            for row in noise
        ]
    ).reshape(noise.shape)
    worst = int(np.argmax(ratios[-1])) if ratios.size else 0
    alone = ratios[:-1, worst] if ratios.size else np.zeros(0)
    summed = float(np.sum(alone[np.isfinite(alone)]))
    nodes = [
        NodeSensitivity(
            u.node,
            u.op_type,
            float(alone[i]),
            float(alone[i]) / summed if summed > 0 and math.isfinite(alone[i]) else 0.0,
        )
        for i, u in enumerate(switches.units)
    ]
    nodes.sort(key=lambda s: -s.noise if not math.isnan(s.noise) else -math.inf)
    all_noise = float(ratios[-1, worst]) if ratios.size else 0.0
    return Sensitivity(METHOD, samples, outputs, all_noise, tuple(nodes))
