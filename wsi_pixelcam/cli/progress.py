"""tqdm progress bars: slides and patches for batch runs, batches per epoch for training.

On a terminal the bars redraw in place. Anywhere else (a SLURM log, ``nohup``, a pipe) a
redraw would pile up carriage returns on one endless line, so there each bar writes a plain
line at most every :data:`LOG_INTERVAL_S` seconds, and once more when it finishes.
"""

from __future__ import annotations

import re
import sys
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

from wsi_pixelcam.batch import BatchProgress, SlideOutcome
from wsi_pixelcam.progress import ProgressFn

LOG_INTERVAL_S = 30.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LogLines:
    """A file for tqdm that turns each redraw into one plain line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        line = _ANSI.sub("", text).replace("\r", "").strip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _bar(**kwargs: Any) -> tqdm:
    """A tqdm bar that redraws on a terminal and logs plain lines elsewhere."""
    if sys.stderr.isatty():
        return tqdm(**kwargs)
    kwargs.pop("position", None)
    return tqdm(**kwargs, file=_LogLines(sys.stderr), mininterval=LOG_INTERVAL_S, ascii=True)


class SlideBars:
    """Draws slide and patch progress from the callbacks :func:`run_batch` makes."""

    def __init__(self, n_slides: int, disable: bool = False) -> None:
        self._slides = _bar(
            total=n_slides, desc="slides", unit="slide", disable=disable, position=0
        )
        self._patches = _bar(total=0, desc="patches", unit="patch", disable=disable, position=1)
        self._per_slide: dict[str, tuple[int, int]] = {}

    def _on_outcome(self, outcome: SlideOutcome) -> None:
        _done, total = self._per_slide.get(outcome.slide_id, (0, 0))
        if total:
            self._on_patches(outcome.slide_id, total, total)
        self._slides.set_postfix_str(f"{outcome.slide_id}: {outcome.status}", refresh=False)
        self._slides.update(1)

    def _on_patches(self, slide_id: str, done: int, total: int) -> None:
        old_done, old_total = self._per_slide.get(slide_id, (0, 0))
        self._per_slide[slide_id] = (done, total)
        if total != old_total:
            self._patches.total = (self._patches.total or 0) + total - old_total
        self._patches.update(done - old_done)

    def callbacks(self) -> BatchProgress:
        return BatchProgress(on_outcome=self._on_outcome, on_patches=self._on_patches)

    def __enter__(self) -> SlideBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._patches.close()
        self._slides.close()


class EpochBars:
    """One bar per training or evaluation pass: :meth:`task` is the library's TaskProgress."""

    def __init__(self, disable: bool = False) -> None:
        self._disable = disable
        self._bar: tqdm | None = None

    def task(self, name: str) -> ProgressFn:
        """The callback for pass ``name``: its first report opens the pass's bar (closing the
        previous one), so a pass that fails before its first batch draws nothing."""
        bar: tqdm | None = None

        def advance(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                self.close()
                bar = self._bar = _bar(total=total, desc=name, unit="batch", disable=self._disable)
            bar.update(done - bar.n)

        return advance

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> EpochBars:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
