"""partition: ONNX models -> operator graphs -> cut points -> verified standalone pieces -> the app graph.

Modules: `onnx_graph` (load_onnx), `flops` (per-operator FLOP rules), `cuts` (find_cuts,
coarsen: pure graph functions), `extract` (piece files, chained onnxruntime check), `api`
(partition_model, cached by model hash), `app_graph` (build_app_graph), `zoo` (reference
architectures built with onnx.helper), `types` (TensorInfo, OpCost, Piece).
"""
