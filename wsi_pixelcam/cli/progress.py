"""tqdm progress bars: slides and patches for batch runs, batches per epoch for training."""

from __future__ import annotations

from types import TracebackType

from tqdm import tqdm

from wsi_pixelcam.batch import BatchProgress, SlideOutcome


class SlideBars:
    """Draws slide and patch progress from the callbacks :func:`run_batch` makes."""

    def __init__(self, n_slides: int, disable: bool = False) -> None:
        self._slides = tqdm(
            total=n_slides, desc="slides", unit="slide", disable=disable, position=0
        )
        self._patches = tqdm(total=0, desc="patches", unit="patch", disable=disable, position=1)
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
    """One bar per pass (stage and epoch) of training or evaluation."""

    def __init__(self, disable: bool = False) -> None:
        self._disable = disable
        self._bar: tqdm | None = None
        self._key: tuple[str, int] | None = None

    def update(self, stage: str, epoch: int, step: int, total: int) -> None:
        if (stage, epoch) != self._key:
            self.close()
            self._key = (stage, epoch)
            desc = stage if stage in ("cams", "eval") else f"{stage} epoch {epoch}"
            self._bar = tqdm(total=total, desc=desc, unit="batch", disable=self._disable)
        assert self._bar is not None
        self._bar.update(step - self._bar.n)

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
