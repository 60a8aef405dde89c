"""Geometry out of and into the pipeline: masks to polygons, QuPath GeoJSON read and write."""

from wsi_pixelcam.geo.geojson import (
    Annotation,
    annotation_feature,
    class_color,
    feature_collection,
    read_qupath_annotations,
    tile_feature,
    write_geojson,
)
from wsi_pixelcam.geo.polygons import polygons_from_chunked_map, polygons_from_mask
from wsi_pixelcam.geo.qupath_rules import GeoJsonError, validate_geojson, validate_geojson_file

__all__ = [
    "Annotation",
    "GeoJsonError",
    "annotation_feature",
    "class_color",
    "feature_collection",
    "polygons_from_chunked_map",
    "polygons_from_mask",
    "read_qupath_annotations",
    "tile_feature",
    "validate_geojson",
    "validate_geojson_file",
    "write_geojson",
]
