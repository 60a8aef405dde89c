"""``wsi-pixelcam demo``: the whole pipeline on the bundled slide, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_pixelcam.cli.common import EXIT_OK, add_common, log


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="tile, train and infer the bundled example slide end to end",
        description="Tile the bundled CMU-1-Small-Region.svs, train a tiny PixelCAM on its "
        "rule-derived Epidermis annotation, infer it, and say how to open the results.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    add_common(demo)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_pixelcam.cli.progress import EpochBars
    from wsi_pixelcam.demo import run_demo

    with EpochBars(disable=args.quiet) as bars:
        result = run_demo(
            args.out, on_step=lambda name: log.info("demo: %s", name), progress=bars.task
        )
    out = result.outputs
    infer = result.inference
    print(
        f"demo done in {sum(result.seconds.values()):.0f} s "
        f"(tile {result.seconds['tile']:.0f}, train {result.seconds['train']:.0f}, "
        f"infer {result.seconds['infer']:.0f}): {result.tiling.n_patches} patches, "
        f"{infer.n_rois} ROI(s) of {infer.roi_area_um2 / 1e6:.3f} mm^2 at threshold "
        f"{infer.threshold:.2f}"
    )
    print(f"  slide | heatmap : {out['overlay_full']}")
    print(f"  heatmap overlay : {out['overlay']}  (on the 8 um/px thumbnail)")
    print(f"  ROI polygons    : {out['rois']}")
    print(f"  per-patch tiles : {out['tiles']}")
    print(f"  summary         : {out['summary']}")
    print(f"  heatmap (zarr)  : {out['heatmap']}  (napari: napari --plugin napari-ome-zarr ...)")
    print(f"  model           : {out['model']}")
    print(
        "Open in QuPath: File > Open the slide "
        f"({out['slide']}), then drag rois.geojson (and tiles.geojson) onto the viewer, or "
        "File > Import objects from file. Tiles carry a 'prob' measurement: Measure > "
        "Show measurement maps colours them as a heatmap. The training annotation is "
        f"{out['annotation']}."
    )
    print(f"Report (open in a browser): {out['report']}")
    return EXIT_OK
