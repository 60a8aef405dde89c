import numpy as np
import pytest
import slidegen

from wsi_pixelcam.errors import MppError, UnsupportedSlideError
from wsi_pixelcam.slide import open_slide, resolve_mpp


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("svs", "backend property tiffslide.mpp-x/y"),
        ("generic", "backend property tiffslide.mpp-x/y"),
        ("ome", "OME-XML PhysicalSizeX/Y"),
        ("flat", "backend property tiffslide.mpp-x/y"),
    ],
)
def test_mpp_source_per_format(slides, layout, name, source):
    with open_slide(slides[name]) as reader:
        assert reader.backend.name == "tiffslide"
        mpp = resolve_mpp(reader)
    assert mpp.mean == pytest.approx(layout.mpp) and mpp.source == source


def test_resolution_tags_used_when_backend_has_no_mpp(tmp_path, tissue_image):
    # openslide reads no MPP from a generic TIFF's resolution tags in inches; the tags still count
    path = tmp_path / "inch.tif"
    import tifffile

    per_inch = 25400 / 0.25
    tifffile.imwrite(
        path,
        tissue_image[:512, :512],
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        resolution=(per_inch, per_inch),
        resolutionunit="INCH",
    )
    with open_slide(path, "openslide") as reader:
        mpp = resolve_mpp(reader)
    assert mpp.mean == pytest.approx(0.25, rel=1e-3)
    assert mpp.source in ("backend property openslide.mpp-x/y", "TIFF resolution tags")


def test_objective_power_is_flagged_estimate(tmp_path, tissue_image):
    path = slidegen.write_svs(tmp_path / "obj.svs", tissue_image[:512, :512], mpp=0.25)
    text = path.read_bytes().replace(b"|MPP = 0.25", b"|XYZ = 0.25")
    path.write_bytes(text)
    with open_slide(path) as reader:
        mpp = resolve_mpp(reader)
    assert mpp.estimated and mpp.mean == pytest.approx(0.5) and "objective" in mpp.source


def test_override_wins(slides):
    with open_slide(slides["svs"]) as reader:
        mpp = resolve_mpp(reader, 0.3)
    assert (mpp.mean, mpp.source) == (0.3, "user override")


def test_missing_mpp_names_option(slides):
    with open_slide(slides["no_mpp"]) as reader, pytest.raises(MppError, match="--mpp"):
        resolve_mpp(reader)


def test_absurd_mpp_rejected(tmp_path, tissue_image):
    path = slidegen.write_svs(tmp_path / "absurd.svs", tissue_image[:512, :512], mpp=0.00001)
    with open_slide(path) as reader, pytest.raises(MppError, match="implausible MPP 1e-05"):
        resolve_mpp(reader)


def test_not_a_slide(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is a text file\n")
    with pytest.raises(UnsupportedSlideError, match=r"notes.svs: not a slide any backend can open"):
        open_slide(path)


def test_missing_file(tmp_path):
    with pytest.raises(UnsupportedSlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")


def test_both_backends_read_the_same_pixels(slides):
    with open_slide(slides["svs"], "tiffslide") as a, open_slide(slides["svs"], "openslide") as b:
        assert a.level_dimensions == b.level_dimensions
        for level in (0, 1):
            pa = a.read_region((1000, 600), level, (200, 150))
            pb = b.read_region((1000, 600), level, (200, 150))
            assert pa.shape == pb.shape == (150, 200, 3)
            assert np.abs(pa.astype(int) - pb.astype(int)).mean() < 2.0


def test_bundled_cmu_slide_opens_with_both_backends(cmu_slide):
    for backend in ("tiffslide", "openslide"):
        with open_slide(cmu_slide, backend) as reader:
            assert reader.dimensions == (2220, 2967)
            assert resolve_mpp(reader).mean == pytest.approx(0.499, abs=1e-3)


def test_direct_tile_reads_match_tiffslide(slides):
    # the threaded fast path must return what tiffslide's own read_region returns
    import tiffslide

    with open_slide(slides["svs"], "tiffslide") as reader:
        ref = tiffslide.TiffSlide(slides["svs"])
        for xy, level, size in [((1000, 600), 0, (300, 200)), ((640, 380), 1, (100, 90))]:
            got = reader.read_region(xy, level, size)
            want = ref.read_region(xy, level, size, as_array=True)
            assert np.array_equal(got, want)
        # beyond the right edge the fast path pads with white, like openslide's transparent
        edge = reader.read_region((4000, 0), 0, (200, 50))
        assert (edge[:, 96:] == 255).all() and edge.shape == (50, 200, 3)


def test_stripped_tiff_uses_tiffslide_fallback(tmp_path, tissue_image):
    import tifffile

    path = tmp_path / "stripped.tif"
    tifffile.imwrite(
        path,
        tissue_image[:600, :800],
        photometric="rgb",
        rowsperstrip=64,
        resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as reader:
        region = reader.read_region((100, 100), 0, (50, 40))
    assert np.array_equal(region, tissue_image[100:140, 100:150])


def test_sparse_tile_reads_white_inside_a_region(tmp_path, tissue_image):
    # a tile the TIFF leaves out (byte count 0) is white, even when the request lies wholly
    # inside the image and the fast path skips the white fill
    import tifffile

    path = tmp_path / "sparse.tif"
    pixels = np.ascontiguousarray(tissue_image[:512, :512])
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(256, 256), resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["TileByteCounts"].overwrite((256 * 256 * 3, 0, 256 * 256 * 3, 256**2 * 3))
    with open_slide(path, "tiffslide") as reader:
        region = reader.read_region((128, 128), 0, (256, 256))
    assert (region[:128, 128:] == 255).all()
    assert np.array_equal(region[:128, :128], pixels[128:256, 128:256])
    assert np.array_equal(region[128:, :], pixels[256:384, 128:384])
