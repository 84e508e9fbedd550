"""Generated gRPC modules of runtime.proto (regenerate: python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. runtime.proto)."""

from tierplan.runtime.proto import runtime_pb2, runtime_pb2_grpc

__all__ = ["runtime_pb2", "runtime_pb2_grpc"]
