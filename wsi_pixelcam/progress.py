"""The one progress callback: ``progress(done, total)`` as a long job advances.

The library reports counts and never prints; whoever asks for progress knows what is counted.
Training runs several passes (teacher epochs, the CAM dump, PixelCAM epochs, evaluation), so it
asks a :data:`TaskProgress` for one callback per pass, named like "teacher epoch 3" or "cams".
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int], None]
"""Called with (units done, units total): patches of a slide, batches of a pass."""

TaskProgress = Callable[[str], ProgressFn]
"""Given a pass's name, the callback to report that pass's progress to."""
