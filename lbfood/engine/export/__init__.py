"""Deployable detectors: a run's model with a fitted OOD scorer and its threshold, as ONNX or TorchScript.

`api` resolves what to export, `detector` is the graph, `writer` writes the file with its metadata.
"""

from lbfood.engine.export.api import ExportConfig, ExportResult, exact_scores, export, exportable

__all__ = ["ExportConfig", "ExportResult", "exact_scores", "export", "exportable"]
