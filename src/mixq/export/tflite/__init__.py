"""LiteRT (TFLite) backend: ``.tflite`` files from mixq models, and what LiteRT runs of them.

The folder owns the whole backend: ``lowering`` (mixq module class -> what litert-torch converts), ``converter``
(the litert-torch call), ``recipes`` (ai-edge-quantizer's dynamic-range and float16 weight storage), ``weight_only``
(mixq's int8/int4 weight-only codes stored as LiteRT integer weights), ``export`` (the public entry point),
``decoder`` / ``decoder_run`` (key/value-cache decoders: export_decoder_tflite, generate_tflite), ``interpreter``
(inspecting and running files) and ``backend`` (the ``tflite`` format and
the ``litert`` runtime, registered with ``mixq.export.backend``). litert-torch, ai-edge-litert and
ai-edge-quantizer are imported only when used: ``pip install 'mixq[litert]'``.
"""

from mixq.export.tflite.converter import INSTALL_HINT, LiteRTMissingError, litert_available
from mixq.export.tflite.decoder import export_decoder_tflite
from mixq.export.tflite.decoder_run import TFLiteDecoderSession, generate_tflite
from mixq.export.tflite.export import IO_DTYPES, export_tflite
from mixq.export.tflite.interpreter import (
    COMPUTE_OPS,
    LiteRTSession,
    TFLiteModelInfo,
    TFLiteOp,
    TFLiteRunner,
    inspect_tflite,
)

__all__ = [
    "COMPUTE_OPS",
    "INSTALL_HINT",
    "IO_DTYPES",
    "LiteRTMissingError",
    "LiteRTSession",
    "TFLiteDecoderSession",
    "TFLiteModelInfo",
    "TFLiteOp",
    "TFLiteRunner",
    "export_decoder_tflite",
    "export_tflite",
    "generate_tflite",
    "inspect_tflite",
    "litert_available",
]
