"""Static HTML report of a cohort run: slides, their maps and the model that made them.

``collect`` reads run outputs into records, ``images`` and ``charts`` make the pictures,
``pages`` writes the HTML and ``build`` puts the folder together. Import the submodules
directly (``from wsi_pixelcam.report.build import build_report``).
"""
