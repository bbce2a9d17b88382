"""Quantized replacements for float layers, one file per mode, plus the observed wrapper used in calibration.

Each quantized class registers itself against the float types it replaces (``registry.register_qmodule``);
importing this package registers them all. Each shows model code the face of the layer it replaced: its
hyper-parameters and a float32 ``weight`` (``facade``).
"""

from mixq.quant.modules.dynamic import DynamicQuantizedConv, DynamicQuantizedLinear
from mixq.quant.modules.embedding import QuantizedEmbedding
from mixq.quant.modules.fp16 import Float16Conv, Float16Linear
from mixq.quant.modules.hf_layers import register_transformers_layers
from mixq.quant.modules.observed import FloatAdd, FloatMatMul, ObservedAdd, ObservedLayer, ObservedMatMul
from mixq.quant.modules.static import QuantizedAdd, QuantizedConv, QuantizedLinear, QuantizedMatMul
from mixq.quant.modules.weight_only import WeightOnlyConv, WeightOnlyLinear

register_transformers_layers()

__all__ = [
    "DynamicQuantizedConv",
    "DynamicQuantizedLinear",
    "FloatAdd",
    "Float16Conv",
    "Float16Linear",
    "FloatMatMul",
    "ObservedAdd",
    "ObservedLayer",
    "ObservedMatMul",
    "QuantizedAdd",
    "QuantizedConv",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedMatMul",
    "WeightOnlyConv",
    "WeightOnlyLinear",
]
