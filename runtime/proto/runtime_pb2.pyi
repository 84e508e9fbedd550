from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("request_id", "src", "dst", "branch", "deadline_unix_ms", "name", "dtype", "shape", "data", "last_chunk", "error", "sent_unix_ms", "empty", "trace")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_CHUNK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    src: str
    dst: str
    branch: str
    deadline_unix_ms: float
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    last_chunk: bool
    error: str
    sent_unix_ms: float
    empty: bool
    trace: str
    def __init__(self, request_id: _Optional[str] = ..., src: _Optional[str] = ..., dst: _Optional[str] = ..., branch: _Optional[str] = ..., deadline_unix_ms: _Optional[float] = ..., name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., last_chunk: _Optional[bool] = ..., error: _Optional[str] = ..., sent_unix_ms: _Optional[float] = ..., empty: _Optional[bool] = ..., trace: _Optional[str] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class PieceFile(_message.Message):
    __slots__ = ("node", "manifest_entry_json", "data", "filename")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    node: str
    manifest_entry_json: str
    data: bytes
    filename: str
    def __init__(self, node: _Optional[str] = ..., manifest_entry_json: _Optional[str] = ..., data: _Optional[bytes] = ..., filename: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("site", "plan_json", "peers", "collector", "links_json", "files", "options_json", "generation")
    class PeersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SITE_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    LINKS_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    site: str
    plan_json: str
    peers: _containers.ScalarMap[str, str]
    collector: str
    links_json: str
    files: _containers.RepeatedCompositeFieldContainer[PieceFile]
    options_json: str
    generation: int
    def __init__(self, site: _Optional[str] = ..., plan_json: _Optional[str] = ..., peers: _Optional[_Mapping[str, str]] = ..., collector: _Optional[str] = ..., links_json: _Optional[str] = ..., files: _Optional[_Iterable[_Union[PieceFile, _Mapping]]] = ..., options_json: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("site", "configured", "generation", "queue_depth", "metrics_address", "pid", "requests_done", "replica")
    SITE_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_DONE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    site: str
    configured: bool
    generation: int
    queue_depth: int
    metrics_address: str
    pid: int
    requests_done: int
    replica: int
    def __init__(self, site: _Optional[str] = ..., configured: _Optional[bool] = ..., generation: _Optional[int] = ..., queue_depth: _Optional[int] = ..., metrics_address: _Optional[str] = ..., pid: _Optional[int] = ..., requests_done: _Optional[int] = ..., replica: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("site", "address", "pid", "replica")
    SITE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    site: str
    address: str
    pid: int
    replica: int
    def __init__(self, site: _Optional[str] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., replica: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("inputs", "timeout_ms")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.MessageMap[str, Tensor]
    timeout_ms: float
    def __init__(self, inputs: _Optional[_Mapping[str, Tensor]] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class SinkResult(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class SinkResults(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SinkResult]
    def __init__(self, items: _Optional[_Iterable[_Union[SinkResult, _Mapping]]] = ...) -> None: ...

class PredictReply(_message.Message):
    __slots__ = ("outputs", "error", "latency_ms", "request_id")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SinkResults
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SinkResults, _Mapping]] = ...) -> None: ...
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.MessageMap[str, SinkResults]
    error: str
    latency_ms: float
    request_id: str
    def __init__(self, outputs: _Optional[_Mapping[str, SinkResults]] = ..., error: _Optional[str] = ..., latency_ms: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...
