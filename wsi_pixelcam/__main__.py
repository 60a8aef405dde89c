"""``python -m wsi_pixelcam`` runs the CLI."""

from wsi_pixelcam.cli import main

raise SystemExit(main())
