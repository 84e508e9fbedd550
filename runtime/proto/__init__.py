"""Generated gRPC modules of runtime.proto (regenerate: python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. runtime.proto;
runtime_pb2.pyi gives mypy the message classes, which runtime_pb2.py builds at import time)."""

from tierplan.runtime.proto import runtime_pb2, runtime_pb2_grpc

__all__ = ["runtime_pb2", "runtime_pb2_grpc"]
