"""Slide ids of the small cohort the report tests build (``conftest.cohort_run``)."""

TUMOUR = "tumour<i>&1"  # HTML and URL special characters must survive as text
NORMAL = "normal_slide"
BROKEN = "broken"
KILLED = "killed"
FUTURE = "future"
