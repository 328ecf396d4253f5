"""``kvmonai export``: a self-contained inference bundle that runs with MONAI alone (:mod:`kvmonai.export.export`)."""

from kvmonai.export.export import EXPORT_PACKAGES, ExportError, ExportSummary, export_bundle, exported_inference_config

__all__ = ["EXPORT_PACKAGES", "ExportError", "ExportSummary", "export_bundle", "exported_inference_config"]
