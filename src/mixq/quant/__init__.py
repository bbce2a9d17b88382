"""Post-training quantization: specs, primitives, observers, quantized modules and the ``quantize`` entry point."""

from mixq.quant.api import make_config, quantize
from mixq.quant.calibration import CalibrationError
from mixq.quant.spec import ObserverSpec, QuantConfig, QuantSpec, WeightMethod
from mixq.quant.summary import QuantizationSummary

__all__ = ["CalibrationError", "ObserverSpec", "QuantConfig", "QuantSpec", "QuantizationSummary", "WeightMethod",
           "make_config",
           "quantize"]
