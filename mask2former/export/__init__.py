"""Export to ONNX / ``torch.export`` and run the exported model with the project's own pre- and
post-processing (see README "Export and deploy")."""
from .exporter import FORMATS, export_model
from .metadata import read_metadata
from .model import ExportError, MaskFormerExportWrapper, check_exportable
from .runtime import BACKENDS, ExportedMaskFormer, ExportedPredictor

__all__ = [
    "BACKENDS",
    "ExportError",
    "ExportedMaskFormer",
    "ExportedPredictor",
    "FORMATS",
    "MaskFormerExportWrapper",
    "check_exportable",
    "export_model",
    "read_metadata",
]
