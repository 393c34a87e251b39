"""Shared helpers of the studies: output directory, figures, markdown tables, progress."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["prepare_out_dir", "new_figure", "save_figure", "md_table", "Progress"]


def prepare_out_dir(out_dir) -> Path:
    """Create `out_dir` (and its parents) if missing and return it as a Path.

    Raises `refpg.errors.InvalidInputError` naming the directory and the problem (a file is in
    the way, a parent does not exist or cannot be written) instead of an OSError traceback.
    """
    return make_directory(out_dir, "output directory")


def _is_file(path: Path) -> bool:
    """Whether something other than a directory is at `path` (False where the path cannot be read)."""
    try:
        return path.exists() and not path.is_dir()
    except OSError:  # a name too long, say: Path.exists lets that through
        return False


def make_directory(directory, what: str) -> Path:
    """``mkdir -p`` of `directory`, an OSError refused as one line ``WHAT PATH: problem``."""
    from refpg.errors import InvalidInputError

    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in [path, *path.parents] if _is_file(p)), None)
        if blocker is not None:
            problem = (f"{blocker} is a file, not a directory" if blocker == path
                       else f"its parent {blocker} is a file, not a directory")
        else:
            problem = f"cannot be created ({exc.strerror or type(exc).__name__})"
        raise InvalidInputError(f"{what} {path}: {problem}") from None
    probe = path / ".refpg-write-test"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InvalidInputError(f"{what} {path}: cannot be written ({exc.strerror or type(exc).__name__})") from None
    return path


def new_figure(*args, **kwargs):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def md_table(header, rows) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Progress:
    """A text progress indicator on stderr: ``label: k/n``.

    On a terminal, one line rewritten in place (``\\r``); otherwise (stderr to a file or a pipe)
    plain lines, one per quarter, so a log holds no carriage returns.
    """

    def __init__(self, label: str, total: int, *, every: int | None = None, stream=None):
        self.label, self.total = label, max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        try:
            self.tty = bool(isatty and isatty())
        except (OSError, ValueError):  # a closed or detached stream
            self.tty = False
        self.every = every or max(self.total // (20 if self.tty else 4), 1)

    def update(self, k: int) -> None:
        if k % self.every == 0 or k == self.total:
            if not self.tty:
                print(f"{self.label}: {k}/{self.total}", file=self.stream, flush=True)
                return
            print(f"\r{self.label}: {k}/{self.total}", end="", file=self.stream, flush=True)
            if k == self.total:
                print(file=self.stream, flush=True)
