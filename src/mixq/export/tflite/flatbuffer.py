"""Reading and rewriting ``.tflite`` bytes as flatbuffer objects, with every constant's data inline.

A ``.tflite`` file may keep constants after the flatbuffer, each buffer addressed by ``offset`` / ``size`` with no
inline ``data``: ai-edge-quantizer writes every model whose constants pass 256 KiB that way (an int4 Llama layer
at hidden 1024 already does). Parsed with ``flatbuffer_utils.convert_bytearray_to_object``, such a buffer has
``data=None`` and keeps its offset; data put into it and the object packed again gives a file whose offsets point
into the new flatbuffer, not at the constants (garbage scales, non-finite outputs). :func:`read_flatbuffer` moves
every buffer's data inline first and :func:`write_flatbuffer` packs the object inline, so a file can be changed
and written back whatever layout it came in.
"""

from __future__ import annotations

from typing import Any

# A flatbuffer addresses itself with signed 32-bit offsets; litert-torch keeps the same margin below 2 GiB.
INLINE_LIMIT = 2**31 - 2**24


def read_flatbuffer(content: bytes | bytearray) -> Any:
    """The ``ModelT`` object of ``content``, every buffer's data inline (offset and size cleared)."""
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(content))


def write_flatbuffer(model: Any) -> bytes:
    """``model`` (a ``ModelT``) packed as ``.tflite`` bytes with every constant inline.

    Raises ``ValueError`` when the constants pass what one flatbuffer can address (about 2 GiB)."""
    from ai_edge_litert.tools import flatbuffer_utils

    total = 0
    for buffer in model.buffers:
        if buffer.offset or buffer.size:
            raise RuntimeError("a buffer still points outside the flatbuffer; read the model with read_flatbuffer")
        total += 0 if buffer.data is None else len(buffer.data)
    if total > INLINE_LIMIT:
        raise ValueError(f"the file's constants take {total / 2**30:.2f} GiB, more than a .tflite flatbuffer holds "
                         "inline (2 GiB); export a smaller model or fewer float layers")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
