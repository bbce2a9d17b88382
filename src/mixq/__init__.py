"""mixq: mixed precision training and int8 quantization for PyTorch, deployed on ONNX Runtime.

Example::

    import mixq
    qmodel = mixq.quantize(model, "static", calib_data=batches)
    print(qmodel.mixq_summary)
    mixq.export_onnx(qmodel, example_inputs, "model_int8.onnx")
    mixq.export_tflite(qmodel, example_inputs, "model_int8.tflite")  # LiteRT: pip install 'mixq[litert]'
    mixq.save_pretrained(qmodel, "model-int8")  # and back, bit for bit: mixq.from_pretrained("model-int8")
"""

from mixq.amp import LossScale, MixedPrecision, NonFiniteGradientsError, NumericsConfig, Policy
from mixq.auto import AutoQuantReport, AutoQuantResult, EvalFnError, LayerOverride, autoquantize
from mixq.export import ExportError, export_decoder_onnx, export_onnx, generate_onnx, generate_torch, optimized_op_types
from mixq.export.tflite import (
    LiteRTSession,
    TFLiteDecoderSession,
    TFLiteRunner,
    export_decoder_tflite,
    export_tflite,
    generate_tflite,
    inspect_tflite,
)
from mixq.pretrained import from_pretrained, save_pretrained
from mixq.qat import QATConfig, convert, freeze_batchnorm, freeze_observers, prepare_qat
from mixq.quant import (
    CalibrationError,
    ObserverSpec,
    QuantConfig,
    QuantizationSummary,
    QuantSpec,
    WeightMethod,
    make_config,
    quantize,
)

__version__ = "0.1.0"

__all__ = [
    "AutoQuantReport",
    "AutoQuantResult",
    "CalibrationError",
    "EvalFnError",
    "ExportError",
    "LayerOverride",
    "LiteRTSession",
    "LossScale",
    "MixedPrecision",
    "NonFiniteGradientsError",
    "NumericsConfig",
    "ObserverSpec",
    "Policy",
    "QATConfig",
    "QuantConfig",
    "QuantSpec",
    "QuantizationSummary",
    "TFLiteDecoderSession",
    "TFLiteRunner",
    "WeightMethod",
    "autoquantize",
    "convert",
    "export_decoder_onnx",
    "export_onnx",
    "export_decoder_tflite",
    "export_tflite",
    "freeze_batchnorm",
    "freeze_observers",
    "from_pretrained",
    "generate_onnx",
    "generate_tflite",
    "generate_torch",
    "inspect_tflite",
    "make_config",
    "optimized_op_types",
    "prepare_qat",
    "quantize",
    "save_pretrained",
]
