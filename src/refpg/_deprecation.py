"""Keep an old positional call working, with a warning that shows the new one.

Functions of two policies take the old one by name (docs/conventions.md,
"Argument order"): ``kl_divergence(mdp, policy, theta, theta_old=theta_k)``.
Until a release removes it, the earlier positional form is still accepted and
means what it always meant; it emits `refpg.errors.RefpgDeprecationWarning`.
"""

from __future__ import annotations

import functools
import inspect
import warnings

from refpg.errors import RefpgDeprecationWarning


def keyword_only_since(*names: str):
    """Let the keyword-only arguments `names` still be passed positionally, in that order, with a warning.

    The warning spells the new call from the signature, e.g.
    ``kl_divergence(mdp, policy, theta, theta_old=theta_old)``. The
    wrapped function keeps its own signature (`inspect.signature` follows
    ``__wrapped__``), so help() shows only the new form.
    """

    def decorate(fn):
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        n_positional = len(positional)
        old = ", ".join(positional + list(names))
        call = f"{fn.__name__}({', '.join(positional + [f'{n}={n}' for n in names])})"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if len(args) > n_positional:
                extra = args[n_positional:]
                if len(extra) > len(names):
                    raise TypeError(f"{fn.__name__}() takes at most {n_positional + len(names)} positional "
                                    f"arguments ({n_positional} in the current form), but {len(args)} were given")
                for name, value in zip(names, extra):
                    if name in kwargs:
                        raise TypeError(f"{fn.__name__}() got multiple values for argument {name!r}")
                    kwargs[name] = value
                passed = ", ".join(names[:len(extra)])
                warnings.warn(
                    f"{fn.__name__}({old}) with {passed} passed by position is deprecated and will be "
                    f"removed; pass it by name: {call}", RefpgDeprecationWarning, stacklevel=2)
                args = args[:n_positional]
            return fn(*args, **kwargs)

        return wrapper

    return decorate
