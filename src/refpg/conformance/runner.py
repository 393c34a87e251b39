"""Dispatch by kind, registration of adapters in a user's file, and the bundled demo.

A project's file can register several functions for ``refpg check FILE.py``::

    from refpg.conformance import register

    @register("gae", convention="sb3")
    def my_gae(rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
        ...

Importing the file records each registration; the CLI then checks them all.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from refpg._validation import check_choice, did_you_mean
from refpg.errors import InvalidInputError

__all__ = ["CHECKS", "KINDS", "CONVENTIONS", "FLAG_OPTIONS", "Option", "options_of", "parse_option",
           "check_options", "check", "register", "Registration", "load_function", "load_file", "demo"]


def _checks() -> dict:
    from refpg.conformance.gae import check_gae
    from refpg.conformance.kl import check_kl_estimator
    from refpg.conformance.losses import check_ppo_loss, check_value_loss
    from refpg.conformance.reinforce import check_reinforce_estimator
    from refpg.conformance.trpo import check_trpo_step
    from refpg.conformance.llm_loss import check_llm_loss
    from refpg.conformance.group_advantages import check_group_advantages
    from refpg.conformance.token_loss import check_token_policy_loss
    from refpg.conformance.kl_penalty import check_kl_penalty
    from refpg.conformance.gaussian import check_gaussian_kl, check_gaussian_log_prob
    from refpg.conformance.gaussian_ppo import check_gaussian_ppo_loss
    from refpg.conformance.gaussian_squashed import check_squashed_log_prob
    from refpg.conformance.update import check_update
    from refpg.conformance.pipeline import check_pipeline_gradient

    return {"gae": check_gae, "ppo_loss": check_ppo_loss, "value_loss": check_value_loss,
            "kl_estimator": check_kl_estimator, "reinforce_estimator": check_reinforce_estimator,
            "trpo_step": check_trpo_step,
            "group_advantages": check_group_advantages, "token_policy_loss": check_token_policy_loss,
            "llm_loss": check_llm_loss, "kl_penalty": check_kl_penalty,
            "gaussian_log_prob": check_gaussian_log_prob, "gaussian_kl": check_gaussian_kl,
            "squashed_log_prob": check_squashed_log_prob, "gaussian_ppo_loss": check_gaussian_ppo_loss,
            "update": check_update, "pipeline_gradient": check_pipeline_gradient}


#: The check of each kind: ``CHECKS[kind](fn, **options)`` returns a `refpg.conformance.Report`.
CHECKS = _checks()
#: Every kind the kit checks, in the order of `CHECKS`.
KINDS = tuple(CHECKS)


def _conventions() -> dict:
    from refpg.conformance.gae import GAE_CONVENTIONS
    from refpg.conformance.kl import KL_CONVENTIONS
    from refpg.conformance.losses import PPO_CONVENTIONS, VALUE_CONVENTIONS
    from refpg.conformance.reinforce import REINFORCE_CONVENTIONS
    from refpg.conformance.trpo import TRPO_CONVENTIONS
    from refpg.conformance.llm_loss import LLM_LOSS_CONVENTIONS
    from refpg.conformance.group_advantages import GROUP_ADVANTAGE_CONVENTIONS
    from refpg.conformance.token_loss import TOKEN_LOSS_CONVENTIONS
    from refpg.conformance.kl_penalty import KL_PENALTY_CONVENTIONS
    from refpg.conformance.gaussian import GAUSSIAN_KL_CONVENTIONS, GAUSSIAN_LOG_PROB_CONVENTIONS
    from refpg.conformance.gaussian_ppo import GAUSSIAN_PPO_CONVENTIONS
    from refpg.conformance.gaussian_squashed import SQUASHED_CONVENTIONS
    from refpg.conformance.update import UPDATE_CONVENTIONS
    from refpg.conformance.pipeline import PIPELINE_CONVENTIONS

    return {"gae": tuple(GAE_CONVENTIONS), "ppo_loss": tuple(PPO_CONVENTIONS),
            "value_loss": tuple(VALUE_CONVENTIONS), "kl_estimator": tuple(KL_CONVENTIONS),
            "reinforce_estimator": tuple(REINFORCE_CONVENTIONS), "trpo_step": tuple(TRPO_CONVENTIONS),
            "group_advantages": tuple(GROUP_ADVANTAGE_CONVENTIONS),
            "token_policy_loss": tuple(TOKEN_LOSS_CONVENTIONS), "llm_loss": tuple(LLM_LOSS_CONVENTIONS),
            "kl_penalty": tuple(KL_PENALTY_CONVENTIONS),
            "gaussian_log_prob": tuple(GAUSSIAN_LOG_PROB_CONVENTIONS), "gaussian_kl": tuple(GAUSSIAN_KL_CONVENTIONS),
            "squashed_log_prob": tuple(SQUASHED_CONVENTIONS), "gaussian_ppo_loss": tuple(GAUSSIAN_PPO_CONVENTIONS),
            "update": tuple(UPDATE_CONVENTIONS), "pipeline_gradient": tuple(PIPELINE_CONVENTIONS)}


#: The conventions each kind's check accepts, kind -> tuple of names.
CONVENTIONS = _conventions()

# Options that ppo_loss and value_loss take through **options (not in their signatures), with
# their types and the defaults that do not depend on the convention.
_VAR_OPTIONS = {
    # check_gae hands these to gae_layouts' token conventions (rlhf, openrlhf).
    "gae": (("whiten_count_eps", "float", 0.0), ("whiten_single_token", "str", "zero")),
    "ppo_loss": (("normalize", "str", "set by the convention"), ("ddof", "int", 1), ("eps", "float", 1e-8),
                 ("dual_clip", "float", "set by the convention (none: off; verl: 3)"), ("eps_low", "float", "none: the clip_eps passed"),
                 ("eps_high", "float", "none: the clip_eps passed"), ("clip_fraction", "str", "set by the convention"),
                 ("count_eps", "float", "set by the convention (0; verl: 1e-8)")),
    "value_loss": (("style", "str", "set by the convention"), ("coef", "float", "set by the convention")),
}


def _update_options() -> tuple:
    """check_update's hyperparameters: the fields of `refpg.algorithms.actor_critic.UpdateConfig`."""
    from dataclasses import fields

    from refpg.algorithms.actor_critic import UpdateConfig

    types = {"betas": "pair", "n_epochs": "int", "norm_ddof": "int", "minibatch_size": "int",
             "normalize_advantage": "str", "cg_max_steps": "int", "line_search_max_iter": "int",
             "n_critic_updates": "int"}
    return tuple((f.name, types.get(f.name, "str" if isinstance(f.default, str) else "float"), f.default)
                 for f in fields(UpdateConfig))


_VAR_OPTIONS["update"] = _update_options()


#: Options whose None means "off" or "as the function's own argument" (``--option dual_clip=none``).
NULLABLE_OPTIONS = {("ppo_loss", "dual_clip"), ("ppo_loss", "eps_low"), ("ppo_loss", "eps_high")} | {
    ("llm_loss", k) for k in ("adv_eps", "eps_high", "dual_clip", "norm_length", "kl")} | {
    ("group_advantages", "eps"), ("group_advantages", "scale_rewards")} | {
    ("token_policy_loss", k) for k in ("eps_high", "dual_clip", "norm_length", "accumulation", "empty_rows",
                                       "count_eps", "advantages", "loss", "aggregation", "loss_type",
                                       "importance_sampling_level")} | {
    ("kl_penalty", k) for k in ("gradient", "kl_type", "max_log_ratio")} | {
    # the Gaussian kinds: None is the convention's default
    (kind, k) for kind in ("gaussian_log_prob", "gaussian_kl", "squashed_log_prob", "gaussian_ppo_loss")
    for k in ("scale", "state_dependent")} | {
    ("squashed_log_prob", "pre_tanh"), ("squashed_log_prob", "eps")} | {
    ("gaussian_ppo_loss", k) for k in ("normalize", "ddof", "adv_eps")} | {
    ("update", k) for k in ("order", "clip_range_vf", "minibatch_size", "normalize_advantage", "max_grad_norm",
                            "critic_lr", "target_kl")} | {("pipeline_gradient", "minibatch_size")}


class Option(NamedTuple):
    """One keyword option of a check: its name, type (``"bool"``, ``"int"``, ``"float"`` or
    ``"str"``), the values a string may take (empty: any) and its default."""

    name: str
    type: str
    choices: tuple
    default: Any


def _choices(kind: str, name: str) -> tuple:
    from refpg.conformance._harness import BACKENDS, DTYPES
    from refpg.conformance.losses import VALUE_STYLES
    from refpg.conformance.gae import GAE_OUTPUTS
    from refpg.conformance.losses import CLIP_FRACTIONS
    from refpg.conformance.reinforce import NORMALIZATIONS, OBJECTIVES
    from refpg.losses import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, TOKEN_LOSSES
    from refpg.conformance.kl_penalty import GRADIENTS, VALUES
    from refpg.conformance.gaussian import KL_DIRECTIONS, SCALES
    from refpg.conformance.gaussian_squashed import PRE_TANH

    if kind == "update":
        from refpg.algorithms import actor_critic as ac
        choices = {"algorithm": ac.ALGORITHMS, "value_loss": ac.VALUE_LOSSES, "value_clip": ac.VALUE_CLIPS,
                   "optimizer": ac.AC_OPTIMIZERS, "flatten": ac.FLATTENS, "normalize_advantage": ("batch", "minibatch"),
                   "optimizer_convention": ("torch", "optax"), "kl_direction": ac.KL_DIRECTIONS,
                   "norm_eps_on": ("std", "clamp"), "truncation": ("bootstrap", "cut"),
                   "advantages": ("once", "per_epoch")}
        if name in choices:
            return tuple(choices[name])
    if kind == "pipeline_gradient" and name == "reduction":
        from refpg.conformance.pipeline import REDUCTIONS
        return tuple(REDUCTIONS)
    return {"convention": CONVENTIONS[kind], "backend": BACKENDS, "dtype": DTYPES, "objective": OBJECTIVES,
            "normalize": ("none", "batch"), "style": VALUE_STYLES, "normalization": NORMALIZATIONS,
            "clip_fraction": CLIP_FRACTIONS, "output": tuple(GAE_OUTPUTS),
            "whiten_eps_on": ("std", "var", "clamp"), "whiten_single_token": ("zero", "raw"),
            # the language-model kinds (refpg.losses' names)
            "target": ("declared", "unbiased"), "advantage": ADVANTAGE_ESTIMATORS, "std": ("bessel", "population"),
            "loss": TOKEN_LOSSES, "aggregation": AGGREGATIONS, "kl": KL_ESTIMATORS, "kl_placement": ("loss", "reward"),
            "kl_importance": ("none", "detached", "differentiated"), "estimator": ADVANTAGE_ESTIMATORS,
            "scale_rewards": ("group", "batch", "none"),
            "value": VALUES, "gradient": GRADIENTS,
            # the Gaussian kinds
            "scale": SCALES, "direction": KL_DIRECTIONS, "pre_tanh": PRE_TANH}.get(name, ())


def options_of(kind: str) -> dict:
    """Name -> `Option` for every keyword `check_<kind>` accepts (convention, backend, ... included).

    Read from the check function's signature, plus the options ``check_ppo_loss`` and
    ``check_value_loss`` take through ``**options``.
    """
    check_choice(kind, "kind", KINDS)
    out = {}
    for p in inspect.signature(CHECKS[kind]).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            type_ = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "str")
            if "ndarray" in type_:
                type_ = "array"
            out[p.name] = Option(p.name, type_, _choices(kind, p.name), p.default)
        elif p.kind is p.VAR_KEYWORD:
            for name, type_, default in _VAR_OPTIONS.get(kind, ()):
                out[name] = Option(name, type_, _choices(kind, name), default)
    return out


def check_options(kind: str, options: dict, *, where: str) -> dict:
    """Return `options` after checking every key is an option of `kind` and every value has its type
    and, for a string, is one of its choices; `where` opens the message (e.g. ``"register('gae')"``)."""
    accepted = options_of(kind)
    for key, value in options.items():
        if key not in accepted:
            raise InvalidInputError(
                f"{where}: unknown option {key!r}{did_you_mean(key, accepted)} "
                f"(the options of kind {kind!r}: {', '.join(accepted)})")
        opt = accepted[key]
        if value is None and (kind, key) in NULLABLE_OPTIONS:
            continue
        if opt.type == "bool":
            ok = isinstance(value, (bool, np.bool_))
        elif opt.type == "int":
            ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        elif opt.type == "float":
            ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
                  and math.isfinite(value))
        elif opt.type == "pair":
            ok = (isinstance(value, (tuple, list)) and len(value) == 2
                  and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
                          for v in value))
        elif opt.type == "array":
            ok = True  # validated by the check itself, which names the offending entry
        else:
            ok = isinstance(value, str)
        if not ok:
            raise InvalidInputError(f"{where}: {key} should be {_a(opt)}, actual {value!r}")
        if opt.choices and value not in opt.choices:
            raise InvalidInputError(f"{where}: {key} should be one of {', '.join(opt.choices)}"
                                    f"{' for kind ' + repr(kind) if key == 'convention' else ''}, "
                                    f"actual {value!r}{did_you_mean(value, opt.choices)}")
    return options


def _a(opt: Option) -> str:
    return {"bool": "True or False", "int": "an integer", "float": "a finite number",
            "pair": "two finite numbers", "array": "an array"}.get(opt.type, "a string")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")

#: Options of every kind that ``refpg check`` takes as flags of their own, not as ``--option``.
FLAG_OPTIONS = {"convention": "--convention", "backend": "--backend", "dtype": "--dtype", "seed": "--seed",
                "max_examples": "--max-examples"}


def parse_option(kind: str, key: str, text: str):
    """The value of ``KEY=TEXT`` for `kind` (as ``refpg check --option`` gives it), parsed by the option's
    type: a bool from true/false (yes/no, on/off, 1/0, any case), an int, a finite float, or a string
    (quotes optional). Raises `refpg.errors.InvalidInputError` naming the key, the valid keys or values
    and the closest one."""
    if key in FLAG_OPTIONS:
        raise InvalidInputError(f"--option {key}: give it as {FLAG_OPTIONS[key]}")
    accepted = options_of(kind)
    listed = [k for k in accepted if k not in FLAG_OPTIONS]
    if key not in accepted:
        raise InvalidInputError(f"--option {key}: unknown option for --kind {kind}{did_you_mean(key, listed)} "
                                f"(its options: {', '.join(listed) or 'none'}; refpg check --help lists every "
                                f"kind's)")
    opt = accepted[key]
    raw = text.strip()
    if (kind, key) in NULLABLE_OPTIONS and raw.lower() == "none":
        return None
    if opt.type == "bool":
        if raw.lower() in _TRUE or raw.lower() in _FALSE:
            value = raw.lower() in _TRUE
        else:
            raise InvalidInputError(f"--option {key} should be true or false, actual {text!r}")
    elif opt.type == "array":
        raise InvalidInputError(f"--option {key}: an array cannot be given on the command line; pass it from "
                                f"Python (check_update(fn, {key}=...)) or return it in the function's output")
    elif opt.type == "pair":
        try:
            value = tuple(float(v) for v in raw.strip("()[]").split(","))
        except ValueError:
            value = ()
        if len(value) != 2 or not all(map(math.isfinite, value)):
            raise InvalidInputError(f"--option {key} should be two numbers separated by a comma (e.g. 0.9,0.999), "
                                    f"actual {text!r}")
    elif opt.type in ("int", "float"):
        try:
            value = int(raw) if opt.type == "int" else float(raw)
        except ValueError:
            value = None
        if value is None or (opt.type == "float" and not math.isfinite(value)):
            raise InvalidInputError(f"--option {key} should be {_a(opt)}, actual {text!r}")
    else:
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
        if opt.choices and value not in opt.choices:
            raise InvalidInputError(f"--option {key} should be one of {', '.join(opt.choices)}, actual {text!r}"
                                    f"{did_you_mean(value, opt.choices)}")
    return value


def check(kind: str, fn: Callable, **kwargs):
    """Run ``check_<kind>(fn, **kwargs)``; `kind` is one of `KINDS`."""
    check_choice(kind, "kind", KINDS)
    accepted = options_of(kind)
    for key in kwargs:  # a misspelt option gets a suggestion, not Python's bare TypeError
        if key not in accepted:
            raise InvalidInputError(f"check({kind!r}, ...): unknown option {key!r}{did_you_mean(key, accepted)} "
                                    f"(the options of kind {kind!r}: {', '.join(accepted)})")
    return CHECKS[kind](fn, **kwargs)


class Registration(NamedTuple):
    """One ``@register``: the function, its kind, its options, and the label a report shows
    (``FILE.py:name`` for a function of a file `load_file` imported, else None: the function's own)."""

    fn: Callable
    kind: str
    kwargs: dict
    label: str | None = None


_REGISTRY: list[Registration] = []


def register(kind: str, **kwargs) -> Callable:
    """Decorator: record `fn` to be checked as `kind` with `kwargs` by ``refpg check FILE.py``.

    `kwargs` are options of ``check_<kind>`` (see `options_of`); an unknown key, a value of the wrong
    type or a string outside its choices raises `refpg.errors.InvalidInputError` here, when the file
    is imported, rather than when the check runs. The function itself is returned unchanged.
    """
    if callable(kind):  # @register without parentheses: Python passed the function as the kind
        name = getattr(kind, "__name__", "the function")
        raise InvalidInputError(f"@register needs the kind in parentheses: write @register(\"gae\", ...) "
                                f"(or another of {', '.join(KINDS)}) above def {name}, not @register alone")
    if kind not in KINDS:
        raise InvalidInputError(f"register: kind should be one of {', '.join(KINDS)}, actual {kind!r}"
                                f"{did_you_mean(kind, KINDS)}")
    shown = ", ".join([repr(kind)] + [f"{k}={v!r}" for k, v in kwargs.items()])
    check_options(kind, kwargs, where=f"register({shown})")

    def deco(fn):
        if not callable(fn):
            raise InvalidInputError(f"register({shown}) should decorate a function (a callable), actual "
                                    f"{_describe(fn)}")
        _REGISTRY.append(Registration(fn, kind, dict(kwargs)))
        return fn
    return deco


def load_function(spec: str) -> Callable:
    """``"package.module:function"``, ``"module:Class.method"`` or ``"path/to/file.py:function"`` -> the callable.

    Every way this can fail (no such module, an exception or a SyntaxError while importing it, no such
    attribute, not callable) raises `refpg.errors.InvalidInputError` with one line that says where:
    the file and line, the exception's type, the file or directory a module resolved to, similar names.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInputError(f"target should be MODULE:FUNCTION, FILE.py:FUNCTION or FILE.py, actual {spec!r}")
    if module_name.endswith(".py"):
        obj: Any = _import_file(module_name)
        where = module_name
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: the working directory's modules are importable
        obj = _import_module(module_name)
        where = f"module {module_name!r} ({_location(obj)})"
    for k, part in enumerate(attr.split(".")):
        owner = where if k == 0 else f"{module_name}:{'.'.join(attr.split('.')[:k])}"
        try:
            found = hasattr(obj, part)
        except (Exception, SystemExit) as exc:  # a module's __getattr__ or a property that raises
            raise InvalidInputError(f"{owner}: looking up {part!r} raised {_describe_exception(exc)}") from None
        if not found:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.6)
            if close:
                hint = f"; similar names: {', '.join(close)}"
            elif names:
                hint = f"; its names: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
            else:
                hint = "; it defines no public names"
            raise InvalidInputError(f"{owner} has no attribute {part!r}{hint}{_shadowing(obj) if k == 0 else ''}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidInputError(f"{spec} should name a function (a callable), actual {_describe(obj)}")
    return obj


def _describe(obj) -> str:
    """``module numpy``, ``int 3``, ``Foo <Foo object at 0x...>``: the type and a short repr that never
    stops inside a path nor shows an internal module name."""
    from refpg.conformance._harness import user_repr

    text = user_repr(obj)
    if text.startswith("module "):
        return text
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__name__} {text}"


def _rel(path) -> str:
    """`path` relative to the working directory when it is inside it, else as is."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def _location(module) -> str:
    """Where a module was found: its file, its package directory, or the namespace directory."""
    file = getattr(module, "__file__", None)
    if file:
        p = Path(file)
        return f"the package directory {_rel(p.parent)}/" if p.name == "__init__.py" else _rel(p)
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        return f"the directory {_rel(paths[0])}/, a namespace package without __init__.py"
    return "built in"


def _shadowing(module) -> str:
    """A hint when a module resolved to a directory that sits next to a file of the same name."""
    file = getattr(module, "__file__", None)
    directory = (Path(file).parent if file and Path(file).name == "__init__.py"
                 else Path(list(module.__path__)[0]) if not file and getattr(module, "__path__", None) else None)
    if directory is None:
        return ""
    twin = directory.with_suffix(".py")
    if twin.is_file():
        return (f"; the directory {_rel(directory)}/ shadows {_rel(twin)}: rename one, or give the file "
                f"as {_rel(twin)}:FUNCTION")
    return ""


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise InvalidInputError(
                f"cannot import {name}: no module named {exc.name!r} in the working directory or on "
                f"sys.path (for a file, give FILE.py:FUNCTION)") from None
        raise InvalidInputError(_import_failure(name, exc, _origin(name))) from None
    except (Exception, SystemExit) as exc:
        raise InvalidInputError(_import_failure(name, exc, _origin(name))) from None


def _origin(name: str):
    """The file module `name` would be loaded from (None if unknown), without importing it again."""
    try:
        spec = importlib.util.find_spec(name)
    except (Exception, SystemExit):
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _import_file(path: str):
    """Import the Python file at `path` as a fresh module (its directory first on sys.path while it runs)."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise InvalidInputError(f"target file {path} {what}")
    name = f"refpg_user_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(p.resolve().parent))  # its sibling modules import as in the project
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, InvalidInputError) and _raised_by_register(exc):
            raise InvalidInputError(f"{path}: {_user_line(exc, p)}{exc}") from None
        raise InvalidInputError(_import_failure(path, exc, str(p))) from None
    finally:
        sys.path.pop(0)
    return module


def _raised_by_register(exc) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.name in ("register", "deco") and Path(f.filename) == Path(__file__) for f in frames)


def _same_file(a, b) -> bool:
    try:
        return a is not None and b is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _user_line(exc, file) -> str:
    """``"line N: "`` of the deepest frame of the traceback in `file`, or ``""``."""
    if isinstance(exc, SyntaxError) and _same_file(exc.filename, file) and exc.lineno:
        return f"line {exc.lineno}: "
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, file)]
    return f"line {lines[-1]}: " if lines else ""


def _import_failure(shown: str, exc: BaseException, file) -> str:
    """``cannot import NAME (FILE): line N: Type: message`` in one line; where the exception came
    from another of the user's files (a SyntaxError in a module it imports, say), that file and line too."""
    head = f"cannot import {shown}" + (f" ({_rel(file)})" if file and not shown.endswith(".py") else "")
    if isinstance(exc, SystemExit):
        return (f"{head}: {_user_line(exc, file)}SystemExit({exc.code!r}): the module exits when imported "
                f"(guard that code with if __name__ == '__main__':)")
    return f"{head}: {_user_line(exc, file) if file else ''}{_describe_exception(exc, file)}"


def _describe_exception(exc: BaseException, file=None) -> str:
    """``Type: first line of the message (raised in FILE, line N)``: the place is the deepest frame in
    the user's own code outside `file` (a SyntaxError's own file and line), omitted when there is none."""
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if len(lines) > 1:
        message += " ..."
    origin = None
    if isinstance(exc, SyntaxError) and exc.filename:
        if not _same_file(exc.filename, file):
            origin = (exc.filename, exc.lineno)
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith("<") and not _is_library(f.filename)]
        if frames and not _same_file(frames[-1].filename, file):
            origin = (frames[-1].filename, frames[-1].lineno)
    return message + (f" (raised in {_rel(origin[0])}, line {origin[1]})" if origin else "")


def _is_library(filename: str) -> bool:
    """A file of Python itself, an installed package or refpg: not the user's own code."""
    p = str(Path(filename).resolve())
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parents[1])}
    return "site-packages" in p or any(p.startswith(str(Path(r).resolve()) + os.sep) for r in roots)


def load_file(path: str) -> tuple:
    """Import the Python file at `path` and return the registrations it made, each labelled ``path:name``."""
    before = len(_REGISTRY)
    try:
        module = _import_file(path)
    except InvalidInputError:
        del _REGISTRY[before:]
        raise
    found = tuple(reg._replace(label=f"{path}:{getattr(reg.fn, '__qualname__', reg.fn)}")
                  if getattr(reg.fn, "__module__", None) == module.__name__ else reg
                  for reg in _REGISTRY[before:])
    if not found:
        raise InvalidInputError(f"{path} registered no function: decorate them with "
                                f"@refpg.conformance.register(KIND, ...), or give one as {path}:FUNCTION "
                                f"with --kind")
    return found


# -- the bundled demo ------------------------------------------------------------------------

def demo(*, everything: bool = False, out=None) -> int:
    """Check the bundled examples: one passing and one failing report in full, then a summary table.

    The summary covers one correct and a few broken examples per kind, or
    every bundled example with `everything`. Returns 0 when every example
    behaved as declared (correct ones pass, broken ones fail with their
    expected check id), else 1.
    """
    from refpg import examples

    out = out or sys.stdout
    start = time.perf_counter()
    shown_ok = examples.by_name(DEMO_PASS)
    shown_bad = examples.by_name(DEMO_FAIL)
    print("refpg check: no target given, so here are the bundled examples (refpg.examples).\n", file=out)
    print(f"1. A correct implementation ({shown_ok.description}):\n", file=out)
    ok_report = _run_example(shown_ok)
    print(ok_report, "\n", file=out)
    print(f"2. A classic bug ({shown_bad.description}):\n", file=out)
    bad_report = _run_example(shown_bad)
    print(bad_report, "\n", file=out)
    chosen = examples.CORRECT + examples.BROKEN if everything else _demo_set(examples)
    for backend, package, label in (("torch", "torch", "PyTorch"), ("jax", "jax", "JAX")):
        if importlib.util.find_spec(package) is None:  # a fresh `pip install -e .` has neither
            skipped = [ex for ex in chosen if ex.backend == backend]
            chosen = tuple(ex for ex in chosen if ex.backend != backend)
            if skipped:
                print(f"({label} is not installed: {len(skipped)} {backend} examples skipped; "
                      f"pip install 'refpg[{backend}]' to include them)\n", file=out)
    missing = [ex for ex in chosen if not ex.available]
    if missing:
        chosen = tuple(ex for ex in chosen if ex.available)
        names = sorted({name for ex in missing for name in ex.requires if importlib.util.find_spec(name) is None})
        print(f"({len(missing)} example{'s' if len(missing) != 1 else ''} that run{'' if len(missing) != 1 else 's'} "
              f"real libraries skipped: {', '.join(names)} not installed; "
              f"pip install -e '.[test]' installs them)\n", file=out)
    rows, all_ok = [], _as_declared(shown_ok, ok_report) and _as_declared(shown_bad, bad_report)
    for ex in chosen:
        report = _run_example(ex)
        ok = _as_declared(ex, report)
        all_ok &= ok
        verdict = ("passes" if report.passed else f"FAILS {', '.join(report.failed_ids)}")
        expected = "pass" if ex.expected is None else f"fail {ex.expected}"
        rows.append((ex.name, ex.kind, ex.convention, ex.backend, expected, verdict, "yes" if ok else "NO",
                     f"{report.seconds:.1f}"))
    print(f"3. {'All' if everything else 'A selection of'} bundled examples "
          f"({'refpg check --all-examples' if not everything else 'all'}):\n", file=out)
    print(_table(("example", "kind", "convention", "backend", "declared", "result", "as declared", "s"), rows),
          file=out)
    print(f"\n{sum(r[6] == 'yes' for r in rows)} of {len(rows)} examples behaved as declared "
          f"({time.perf_counter() - start:.1f} s). Check your own code with "
          f"`refpg check MODULE:FUNCTION --kind KIND [--convention C]`.", file=out)
    return 0 if all_ok else 1


DEMO_PASS = "gae_sb3_numpy"
DEMO_FAIL = "gae_truncation_as_termination"


def _demo_set(examples) -> tuple:
    """One correct example per kind, then the classic bugs of `DEMO_BROKEN`."""
    correct = [next(ex for ex in examples.CORRECT if ex.kind == kind) for kind in KINDS
               if any(ex.kind == kind for ex in examples.CORRECT)]
    broken = [ex for ex in examples.BROKEN if ex.name in DEMO_BROKEN]
    return tuple(correct + broken)


DEMO_BROKEN = (
    "gae_timeout_bootstraps_own_value", "gae_cut_on_terminated_only", "gae_bootstraps_terminal",
    "ppo_loss_max", "ppo_loss_ratio_inverted", "value_loss_missing_half", "kl_k1_declared_non_negative",
    "reinforce_gamma_free_declared_discounted", "trpo_no_kl_check", "trpo_keeps_last_try",
)


def _run_example(ex):
    return check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, **dict(ex.options))


def _as_declared(ex, report) -> bool:
    if ex.expected is None:
        return report.passed
    return ex.expected in report.failed_ids


def _table(header, rows) -> str:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])
