"""``--config FILE`` and ``--save-config FILE``: a command's options read from a TOML, YAML
or JSON file (keys are the long option names, with ``-`` or ``_``), and the options of a run
written back in the same format, so that ``--config`` reproduces the run.

The file's values become the command's click ``default_map``: an option given on the
command line wins over the file, and the file wins over the built-in default. No option is
listed here: the keys are the command's own options.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq.errors import ConfigError, OnnxqError
from onnxq.graph.model_io import check_writable, write_atomic

__all__ = ["config_options", "save_config"]

F = TypeVar("F", bound=Callable[..., Any])

SAVE = "onnxq.save_config"  # ctx.meta key: where --save-config writes
LOADED = "onnxq.config"  # ctx.meta key: the --config file read
FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
# not settings: the file options themselves, where output goes and how it is shown
NOT_IN_FILE = frozenset({"config", "save_config"})
NOT_SAVED = frozenset({"output", "as_json", "report_path", "html", "markdown", "quiet", "debug"})


def _format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"config file '{path}': name it .toml, .yaml or .json")
    return kind


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a setting can take")


def read_document(path: Path) -> dict[str, Any]:
    """The top-level mapping of a config file (an empty file: no settings)."""
    kind = _format(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {_first_line(exc)}") from exc
    try:
        doc = _parse(kind, text)
    # tomllib, json and yaml errors are ValueErrors; RecursionError: nested too deeply
    except (ValueError, ImportError, RecursionError) as exc:
        raise ConfigError(f"config file '{path}' cannot be parsed: {_first_line(exc)}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config file '{path}' must hold a table of option = value")
    return doc


def _parse(kind: str, text: str) -> Any:
    if kind == "json":
        return json.loads(text, parse_constant=_refuse_constant)
    if kind == "yaml":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from exc
    if sys.version_info < (3, 11):
        raise ImportError("reading TOML needs Python 3.11 or later; use a .yaml file")
    import tomllib

    return tomllib.loads(text)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _options(command: click.Command) -> dict[str, click.Option]:
    """The command's options a file may set, by long name with '-' and with '_'."""
    out: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in NOT_IN_FILE:
            for opt in param.opts:
                if opt.startswith("--"):
                    out[opt[2:]] = out[opt[2:].replace("-", "_")] = param
    return out


def defaults(command: click.Command, doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """``doc`` as the command's ``default_map`` (parameter name → value)."""
    known = _options(command)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in doc.items():
        where = f"config file '{path}'"
        option = known.get(str(key))
        if option is None or option.name is None:
            raise ConfigError(
                f"{where}: unknown key '{key}' (not an option of onnxq {command.name})"
            )
        if option.name in given:
            raise ConfigError(f"{where}: '{given[option.name]}' and '{key}' set the same option")
        given[option.name] = str(key)
        if value is not None:
            out[option.name] = _value(option, value, f"{where}: key '{key}'")
    return out


def _value(option: click.Option, value: Any, where: str) -> Any:
    """``value`` checked for its option's shape; click converts it as it converts flags."""
    scalar = (str, int, float)
    if option.is_flag and not option.multiple:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} takes true or false, got {value!r}")
        return value
    if option.multiple or option.nargs != 1:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, scalar) for v in items):
            raise ConfigError(f"{where} takes a value or a list of values, got {value!r}")
        return items
    if isinstance(value, bool) or not isinstance(value, scalar):
        raise ConfigError(f"{where} takes one value, got {value!r}")
    return value


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    try:
        found = defaults(ctx.command, read_document(value), value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    ctx.default_map = {**(ctx.default_map or {}), **found}
    ctx.meta[LOADED] = value


def _remember(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    try:
        _format(value)
        check_writable(value)
    except OnnxqError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    ctx.meta[SAVE] = value


def config_options(func: F) -> F:
    """``--config FILE`` (read first: an eager option) and ``--save-config FILE``."""
    func = click.option(
        "--save-config",
        type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False,
        callback=_remember,
        help="Write this run's options (file, command line and defaults merged) to FILE "
        "(.toml, .yaml or .json) once it has run, for --config.",
    )(func)
    return click.option(
        "--config",
        type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False,
        is_eager=True,
        callback=_load,
        help="Read options from FILE (.toml, .yaml or .json; keys are long option names); "
        "options on the command line win.",
    )(_distinct(func))


def side_inputs() -> dict[str, Path | None]:
    """Files a command reads besides its arguments: the --config file and the
    --preprocess file (neither may be one of its outputs)."""
    ctx = click.get_current_context()
    loaded = ctx.meta.get(LOADED)
    pre = ctx.params.get("preprocess_file")
    return {
        "config file": loaded if isinstance(loaded, Path) else None,
        "preprocess file": pre if isinstance(pre, Path) else None,
    }


def _distinct(func: F) -> F:
    """Refuse, before the run, a --save-config file that is one of the run's files."""

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        target = ctx.meta.get(SAVE)
        loaded = ctx.meta.get(LOADED)
        if target is not None and loaded is not None and _same(loaded, target):
            raise click.BadParameter(
                f"'{target}' is also given as --config (an input); choose another path",
                ctx=ctx,
                param_hint="'--save-config'",
            )
        for param in ctx.command.params:
            value = ctx.params.get(param.name or "")
            if target is not None and isinstance(value, Path) and _same(value, target):
                given = (
                    max(param.opts, key=len)
                    if isinstance(param, click.Option)
                    else param.human_readable_name
                )
                raise click.BadParameter(
                    f"'{target}' is also given as {given}; choose another path",
                    ctx=ctx,
                    param_hint="'--save-config'",
                )
        return func(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def effective(ctx: click.Context) -> dict[str, Any]:
    """The run's options as a config file holds them: long name → JSON-ready value;
    options that are not set (None) are left out."""
    out: dict[str, Any] = {}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if param.name in NOT_SAVED or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        if value is None:
            continue
        spell: Callable[[Any], Any] | None = getattr(param.type, "to_config", None)
        convert = spell or _plain
        if isinstance(value, tuple):
            out[_key(param)] = [convert(v) for v in value]
        else:
            out[_key(param)] = convert(value)
    return out


def _key(option: click.Option) -> str:
    return max((o for o in option.opts if o.startswith("--")), key=len)[2:]


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def save_config(ctx: click.Context, command: str) -> None:
    """Write the run's options to the ``--save-config`` file, if one was given."""
    target = ctx.meta.get(SAVE)
    if target is None:
        return
    values = effective(ctx)
    kind = _format(target)
    if kind == "toml":
        text = f"# onnxq {command} options; rerun with --config {target.name}\n" + "".join(
            f"{key} = {_toml(value)}\n" for key, value in values.items()
        )
    elif kind == "yaml":
        import yaml

        text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(values, indent=1) + "\n"
    write_atomic(target, text.encode())


def _toml(value: Any) -> str:
    """One TOML value: a string, boolean, integer, float or list of them."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
