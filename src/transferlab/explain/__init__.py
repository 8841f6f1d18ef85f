"""Look inside a model: class-activation heatmaps (Grad-CAM family) and layer inspection.

Example:
    >>> from transferlab.explain import explain_files
    >>> explain_files(["cat.jpg"], model_dir="runs/pets", method="gradcam", out="cams")  # doctest: +SKIP
"""

from transferlab.explain.gradcam import METHODS, Explainer, Explanation, explain_files, overlay, parse_target

__all__ = ["METHODS", "Explainer", "Explanation", "explain_files", "overlay", "parse_target"]
