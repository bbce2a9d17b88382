"""Quantization-aware training: ``prepare_qat`` -> the user's training loop -> ``convert`` -> ``export_onnx``."""

from mixq.qat.config import QATConfig
from mixq.qat.convert import convert, freeze_batchnorm, freeze_observers
from mixq.qat.embedding import QATEmbedding
from mixq.qat.fake_quantizer import FakeQuantizer
from mixq.qat.layers import QATAdd, QATLayer
from mixq.qat.prepare import is_prepared, prepare_qat

__all__ = ["FakeQuantizer", "QATAdd", "QATConfig", "QATEmbedding", "QATLayer", "convert", "freeze_batchnorm",
           "freeze_observers", "is_prepared", "prepare_qat"]
