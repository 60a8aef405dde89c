"""tqdm progress bars for batch runs: one over slides, one over the patches of running slides."""

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
