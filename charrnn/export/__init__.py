"""`charrnn export`: a trained model in forms that run without charrnn.

Owns the command's logic (`command.py`: checks, formats, atomic output), the ONNX graphs and their verification
against torch (`onnx_model.py`) and the static web folder (`web.py`). The safetensors file is written and read by
`charrnn.store.modelfile` (the store layer), so that sample, eval, info and serve never import this package. May import
charrnn's model, data, store and runtime modules and the `export` extra (onnx, onnxruntime), the latter only
inside the functions that need them.
"""
