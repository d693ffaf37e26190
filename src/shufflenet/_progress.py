"""Progress bars for the command line: tqdm on stderr, only on a terminal and when not quieted."""

from __future__ import annotations

import sys

__all__ = ["Bar"]


class Bar:
    """A ``progress(done, total)`` callback (the library's convention) drawing a tqdm bar on
    stderr. Off when ``quiet`` or when stderr is not a terminal (logs and pipes get no bar
    characters); then tqdm is not even imported. ``total`` may be None (a download of unknown
    size): the bar then counts. Use as a context manager, or call :meth:`close`."""

    def __init__(self, label: str, quiet: bool = False, *, unit: str = "it", unit_scale: bool = False,
                 leave: bool = True) -> None:
        self.on = not quiet and sys.stderr.isatty()
        self._options = {"desc": label, "unit": unit, "unit_scale": unit_scale, "leave": leave}
        if unit_scale:  # bytes: KiB, MiB
            self._options["unit_divisor"] = 1024
        self._bar = None

    def __call__(self, done: int, total: int | None) -> None:
        if not self.on:
            return
        if self._bar is None:  # created on the first report, so start-up time is not in the rate
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, **self._options)
        elif total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def write(self, line: str) -> None:
        """A line on stderr that does not tear the bar."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
