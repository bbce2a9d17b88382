"""OpenVINO (CPU) as a second runtime for mixq's ``.onnx`` files: ``mixq.export.backend.get_runtime("openvino")``.

Importing this package imports no OpenVINO; opening a session does (the ``mixq[openvino]`` extra).
"""
