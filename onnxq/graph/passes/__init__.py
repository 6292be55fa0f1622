"""Graph passes, one per file; each returns a :class:`PassResult`."""

from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["Change", "ChangeKind", "PassResult"]
