"""Tensors on the wire: numpy arrays <-> packed messages or streams of 1 MiB chunks, and gRPC options.

gRPC refuses messages over 4 MiB unless both ends raise the limit, and in Python one huge message
is several times slower than a stream of 1 MiB chunks (DESIGN.md, pitfalls); so a tensor becomes
a header frame plus chunks, and both ends raise their limits anyway for the front door.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TypedDict

import numpy as np

from google.protobuf.message import DecodeError

from tierplan.runtime.proto import runtime_pb2 as pb

__all__ = ["CHUNK_BYTES", "MAX_MESSAGE_BYTES", "GRPC_OPTIONS", "Delivery", "delivery_frames",
           "frames_to_delivery", "tensor_to_pb", "pb_to_tensor", "raw_messages", "raw_to_delivery",
           "pack_delivery", "unpack_delivery", "packed_layout", "dtype_name", "dtype_of", "RAW_STAGE_METHOD", "RAW_CONTROL_METHOD",
           "RAW_STAGE_ONE_METHOD", "RAW_CONTROL_ONE_METHOD", "RAW_STAGE_SHM_METHOD", "RAW_CONTROL_SHM_METHOD",
           "packed_size", "pack_delivery_into", "WireError", "WIRE_DTYPES", "MAX_DELIVERY_BYTES", "MAX_TRACE_STEPS",
           "MAX_DEADLINE_AHEAD_MS", "check_tensor_bytes", "pack_header_into", "RawSteps", "trace_json", "MAX_TRACE_CHARS"]

CHUNK_BYTES = 1 << 20          # 1 MiB stream chunks (measured fastest in Python here)
MAX_MESSAGE_BYTES = 256 << 20  # raised on both ends: the front door sends whole tensors
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


# Big deliveries between tierplan's own workers skip protobuf for the payload: a stream whose
# first message is a serialized `Bundle` of header Frames (no data) and whose next messages are
# the tensors' raw bytes in order, in chunks of at most CHUNK_BYTES (half the CPU of Frame
# streams for 1.5 MB here). Peers in other languages can use Stage.Deliver instead.
RAW_STAGE_METHOD = "/tierplan.runtime.RawStage/Deliver"
RAW_CONTROL_METHOD = "/tierplan.runtime.RawControl/Deliver"
# Deliveries up to a few MiB go as ONE unary message instead (`pack_delivery`): a client stream
# costs 1-3 ms more per call in Python (a consumer thread per call, one message per chunk).
RAW_STAGE_ONE_METHOD = "/tierplan.runtime.RawStage/DeliverOne"
RAW_CONTROL_ONE_METHOD = "/tierplan.runtime.RawControl/DeliverOne"
# Peers on the same host get only a handle (runtime.shm): the packed delivery lies in a shared-memory
# segment, the message names the segment and the packed length.
RAW_STAGE_SHM_METHOD = "/tierplan.runtime.RawStage/DeliverShm"
RAW_CONTROL_SHM_METHOD = "/tierplan.runtime.RawControl/DeliverShm"
_PACK_ALIGN = 64               # tensor bytes start at multiples of this in a packed delivery
_PACK_PREFIX = struct.Struct("<I")

# What a receiver accepts (the wire is hostile: every field of a delivery is checked before use).
# Tensors travel as raw C-order bytes of these numeric dtypes only (numpy names, as `dtype.name`
# gives them): no object, string, structured or platform-dependent types.
WIRE_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                         "float16", "float32", "float64", "complex64", "complex128"})
MAX_DELIVERY_BYTES = MAX_MESSAGE_BYTES   # tensor bytes of one delivery, whichever form carries it
MAX_TRACE_STEPS = 4096                   # [kind, name, ms] steps a delivery's trace may carry
MAX_TRACE_CHARS = 4 << 20                # and characters of its JSON
MAX_DEADLINE_AHEAD_MS = 24 * 3600e3      # a deadline further ahead than this is refused (a sender would retry for days)
_MAX_DIMS = 32                           # numpy's own limit on array dimensions
_MAX_ID_CHARS = 4096                     # request id, node names, branch and tensor names
_dumps = json.JSONEncoder(separators=(",", ":")).encode   # a trace as compact JSON
_BRANCH = re.compile(r"\d{1,9}/\d{1,9}(\.\d{1,9}/\d{1,9})*")
# The packed form's header (pack_delivery, unpack_delivery): fixed little-endian fields, no protobuf
# and no per-frame repetition (a protobuf Bundle cost 13 us to write and 19 to read here, per hop):
#   magic, deadline_unix_ms, sent_unix_ms, flags (1 = empty), tensor count, the byte lengths of
#   request id, src, dst, branch (uint16), error and trace (uint32); then those UTF-8 strings (the
#   trace as JSON); then per tensor: name length (uint16), dtype code (uint8, _WIRE_CODES), ndim
#   (uint8), ndim int64 dims, the name. Bytes after that up to the header's length are padding.
_PACKED_MAGIC = b"TPD1"
_PACKED_HEAD = struct.Struct("<4sddBHHHHHII")
_PACKED_TENSOR = struct.Struct("<HBB")
_WIRE_CODES = {name: i + 1 for i, name in enumerate(sorted(WIRE_DTYPES))}
_CODE_DTYPES = {code: name for name, code in _WIRE_CODES.items()}
_DIMS = [struct.Struct(f"<{n}q") for n in range(33)]   # the dims of a tensor of n dimensions


class WireError(ValueError):
    """A delivery or tensor that breaks the wire format or its limits; receivers answer INVALID_ARGUMENT
    with the message."""


class RawSteps(str):
    """Trace steps a stage worker passes on unread: the JSON of `[kind, name, ms]` steps without the
    outer brackets, as an earlier site wrote them (`unpack_delivery(raw_trace=True)`). A site only
    appends its own steps, so parsing, checking and re-writing the steps before them on every hop
    is wasted; the controller, which reads them, parses and checks the whole trace."""


def trace_json(trace: list) -> str:
    """A trace as the wire carries it: compact JSON ("" for none), RawSteps elements spliced in as they came."""
    if not trace:
        return ""
    parts: list[str] = []
    for step in trace:
        if type(step) is RawSteps:
            if step:
                parts.append(step)
        else:
            parts.append(_step_json(step))
    return "[" + ",".join(parts) + "]"


@functools.lru_cache(maxsize=4096)
def _json_text(text: str) -> str:
    """A step's kind or name as JSON (the same few per deployment: worked out once each)."""
    return json.dumps(text)


def _step_json(step: list) -> str:
    """One [kind, name, ms] step as compact JSON, what `_dumps(step)` gives, without the encoder's
    per-call set-up (a hot spot per hop)."""
    if len(step) == 3:
        kind, name, ms = step
        if type(kind) is str and type(name) is str and type(ms) is float and math.isfinite(ms):
            return f"[{_json_text(kind)},{_json_text(name)},{ms!r}]"
    return _dumps(step)


@dataclass
class Delivery:
    """The outputs of one node for one request (and fan-out branch), addressed to one node."""

    request_id: str
    src: str
    dst: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    branch: str = ""
    deadline_unix_ms: float = 0.0
    error: str = ""
    empty: bool = False
    sent_unix_ms: float = 0.0
    trace: list = field(default_factory=list)   # [kind, name, ms] steps: compute and transfer (or RawSteps)
    # not on the wire: the shared-memory segment its tensors already lie in, when a piece wrote its
    # outputs there (runtime.localwire.Placed); a same-host send then writes only the header
    placed: object | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())


class _FrameHead(TypedDict):
    """The pb.Frame fields every header frame of a delivery repeats (keywords of pb.Frame)."""

    request_id: str
    src: str
    dst: str
    branch: str
    deadline_unix_ms: float
    sent_unix_ms: float
    trace: str


class _BundleHead(_FrameHead):
    """A same-host bundle's header fields: the delivery's outcome rides on every frame."""

    error: str
    empty: bool


def delivery_frames(d: Delivery, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Frame]:
    """The frames of one delivery: per tensor a header with the first chunk, then the rest."""
    head: _FrameHead = dict(request_id=d.request_id, src=d.src, dst=d.dst, branch=d.branch,
                deadline_unix_ms=d.deadline_unix_ms, sent_unix_ms=d.sent_unix_ms,
                trace=trace_json(d.trace))
    if d.error or d.empty or not d.tensors:
        yield pb.Frame(**head, error=d.error, empty=d.empty)
        return
    for name, arr in d.tensors.items():
        arr = np.ascontiguousarray(arr)
        buf = arr.reshape(-1).view(np.uint8).data if arr.size else memoryview(b"")
        n = len(buf)
        first = True
        off = 0
        while first or off < n:
            piece = bytes(buf[off:off + chunk_bytes])
            off += len(piece)
            if first:
                yield pb.Frame(**head, name=name, dtype=dtype_name(arr.dtype), shape=list(arr.shape),
                               data=piece, last_chunk=off >= n)
                first = False
            else:
                yield pb.Frame(request_id=d.request_id, name=name, data=piece, last_chunk=off >= n)


def frames_to_delivery(frames: Iterable[pb.Frame]) -> Delivery:
    """Reassemble a delivery from its frames (the inverse of `delivery_frames`); WireError when the
    frames break the format (see `check_tensor_bytes`, `_delivery_of`) or exceed MAX_DELIVERY_BYTES."""
    d: Delivery | None = None
    parts: dict[str, list[bytes]] = {}
    meta: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
    total = 0
    for f in frames:
        if d is None:
            d = _delivery_of(f)
        if f.name:
            if f.name not in meta:
                _check_name(f.name, "tensor name")
                dtype = dtype_of(f.dtype)
                shape = tuple(f.shape)
                meta[f.name] = (dtype, shape, _nbytes(f.name, dtype, shape))
                parts[f.name] = []
            total += len(f.data)
            if total > MAX_DELIVERY_BYTES:
                raise WireError(f"delivery of more than {MAX_DELIVERY_BYTES} bytes")
            parts[f.name].append(f.data)
    if d is None:
        raise WireError("empty delivery stream")
    for name, (dtype, shape, need) in meta.items():
        raw = b"".join(parts[name])
        check_tensor_bytes(name, need, len(raw))
        d.tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return d


_DTYPE_NAMES: dict[np.dtype, str] = {}
_DTYPES: dict[str, np.dtype] = {}


def dtype_name(dt: np.dtype) -> str:
    """`dt.name`, cached: numpy works the name out in Python on every call (a hot spot per hop)."""
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = dt.name
    return name


def dtype_of(name: str) -> np.dtype:
    """`np.dtype(name)` for a name in WIRE_DTYPES, cached (every received tensor needs one); WireError otherwise."""
    dt = _DTYPES.get(name)
    if dt is None:
        if name not in WIRE_DTYPES:
            raise WireError(f"dtype {name[:64]!r} is not one of {', '.join(sorted(WIRE_DTYPES))}")
        dt = _DTYPES[name] = np.dtype(name)
    return dt


def _nbytes(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of `shape` (exact, in Python integers); WireError for negative dims, too many
    dims, or more bytes than a delivery may carry."""
    if len(shape) > _MAX_DIMS:
        raise WireError(f"tensor {name[:64]!r}: {len(shape)} dimensions (at most {_MAX_DIMS})")
    if shape and min(shape) < 0:
        raise WireError(f"tensor {name[:64]!r}: negative dimension in shape {list(shape)}")
    # the bytes the shape would need were its zero dims 1: numpy refuses a shape whose other dims
    # overflow even when a zero makes it empty, and no real tensor has a dim beyond the byte limit
    n = math.prod(d for d in shape if d) * dtype.itemsize
    if n > MAX_DELIVERY_BYTES:
        raise WireError(f"tensor {name[:64]!r}: shape {list(shape)} of {dtype.name} is beyond the "
                        f"{MAX_DELIVERY_BYTES}-byte limit of a delivery")
    return n if all(shape) else 0


def check_tensor_bytes(name: str, need: int, got: int) -> None:
    """WireError unless a tensor's bytes are exactly what its shape and dtype say."""
    if need != got:
        raise WireError(f"tensor {name[:64]!r}: shape and dtype need {need} bytes, {got} arrived")


def _check_name(value: str, what: str) -> str:
    if len(value) > _MAX_ID_CHARS:
        raise WireError(f"{what} of {len(value)} characters (at most {_MAX_ID_CHARS})")
    return value


def _trace_of(text: str, raw: bool = False) -> list:
    """A delivery's trace: a JSON list of at most MAX_TRACE_STEPS [kind, name, ms] steps; WireError
    otherwise. `raw`: not parsed, only bounded and bracketed, as one RawSteps element (a stage
    worker passes it on; the controller checks it)."""
    if not text:
        return []
    if len(text) > MAX_TRACE_CHARS:
        raise WireError(f"trace of {len(text)} characters (at most {MAX_TRACE_CHARS})")
    if raw:
        if text[0] != "[" or text[-1] != "]":
            raise WireError("trace is not a JSON list")
        return [RawSteps(text[1:-1])] if len(text) > 2 else []
    try:
        steps = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise WireError(f"trace is not JSON ({type(e).__name__})") from None
    if not isinstance(steps, list) or len(steps) > MAX_TRACE_STEPS:
        raise WireError(f"trace must be a list of at most {MAX_TRACE_STEPS} [kind, name, ms] steps")
    for s in steps:
        if not (type(s) is list and len(s) == 3 and type(s[0]) is str and type(s[1]) is str
                and type(s[2]) in (int, float) and math.isfinite(s[2])):
            raise WireError(f"trace step {str(s)[:80]} is not [kind, name, ms]")
    return steps


def _header(d: Delivery, arrays: dict[str, np.ndarray]) -> bytes:
    head: _BundleHead = dict(request_id=d.request_id, src=d.src, dst=d.dst, branch=d.branch,
                deadline_unix_ms=d.deadline_unix_ms, sent_unix_ms=d.sent_unix_ms,
                trace=trace_json(d.trace), error=d.error, empty=d.empty)
    frames = [pb.Frame(**head)] if not arrays else \
        [pb.Frame(**head, name=k, dtype=dtype_name(a.dtype), shape=a.shape) for k, a in arrays.items()]
    return pb.Bundle(frames=frames).SerializeToString()


def _delivery_of(f0: pb.Frame) -> Delivery:
    """The delivery a first frame describes, its fields checked (`_checked_delivery`)."""
    # each field read once: a protobuf attribute read costs about as much as the check on it
    return _checked_delivery(f0.request_id, f0.src, f0.dst, f0.branch, f0.deadline_unix_ms, f0.sent_unix_ms,
                             f0.error, f0.empty, f0.trace)


def _checked_delivery(rid: str, src: str, dst: str, branch: str, deadline: float, sent: float, error: str,
                      empty: bool, trace: str, raw_trace: bool = False) -> Delivery:
    """A delivery of these received fields, checked: ids within length, a branch of the form
    `i/n[.i/n...]` (i < n), finite times, a deadline at most MAX_DEADLINE_AHEAD_MS ahead, a
    well-formed trace. WireError otherwise."""
    for value, what in ((rid, "request id"), (src, "src"), (dst, "dst"), (branch, "branch")):
        if len(value) > _MAX_ID_CHARS:
            _check_name(value, what)
    if branch and (not _BRANCH.fullmatch(branch) or
                   any(int(i) >= int(n) for i, _, n in (p.partition("/") for p in branch.split(".")))):
        raise WireError(f"branch {branch[:64]!r} is not index/count[.index/count...] with index < count")
    if not (math.isfinite(deadline) and math.isfinite(sent)):
        raise WireError("deadline_unix_ms and sent_unix_ms must be finite")
    if deadline > time.time() * 1e3 + MAX_DEADLINE_AHEAD_MS:
        raise WireError(f"deadline more than {MAX_DEADLINE_AHEAD_MS / 3600e3:.0f} h ahead")
    return Delivery(rid, src, dst, {}, branch, deadline, error, empty, sent, _trace_of(trace, raw_trace))


def _header_frames(buf: bytes) -> list:
    """The header frames of a packed or raw delivery; WireError if they do not parse or are none."""
    try:
        frames = pb.Bundle.FromString(buf).frames
    except DecodeError as e:
        raise WireError(f"delivery header does not parse: {e}") from None
    if not frames:
        raise WireError("delivery header has no frame")
    return frames


def _packed_header(d: Delivery, arrays: dict[str, np.ndarray], trace: str | None = None) -> bytes:
    """The packed form's header of `d` with these arrays (see _PACKED_HEAD); `trace`: its JSON, when
    already made. WireError for an id or name too long for its length field."""
    if trace is None:
        trace = trace_json(d.trace)
    texts = [d.request_id.encode(), d.src.encode(), d.dst.encode(), d.branch.encode(), d.error.encode(),
             trace.encode()]
    try:
        head = _PACKED_HEAD.pack(_PACKED_MAGIC, d.deadline_unix_ms, d.sent_unix_ms, 1 if d.empty else 0, len(arrays),
                                 *(len(t) for t in texts))
        return b"".join((head, *texts, _tensor_entries(arrays)))
    except (struct.error, KeyError, IndexError) as e:
        raise WireError(f"delivery {d.request_id[:64]!r} does not fit the packed header: {e}") from None


_ENTRIES: dict[tuple, bytes] = {}   # (name, dtype, shape) of each tensor -> their packed header entries
_ENTRIES_MAX = 1024


def _tensor_entries(arrays: dict[str, np.ndarray]) -> bytes:
    """The packed header's entries for these tensors (name, dtype code, shape), kept by what they
    describe: a node sends tensors of the same names, dtypes and shapes request after request."""
    key = tuple((k, a.dtype, a.shape) for k, a in arrays.items())
    entries = _ENTRIES.get(key)
    if entries is None:
        parts: list[bytes] = []
        for k, dt, shape in key:
            name = k.encode()
            parts += (_PACKED_TENSOR.pack(len(name), _WIRE_CODES[dtype_name(dt)], len(shape)),
                      _DIMS[len(shape)].pack(*shape), name)
        entries = b"".join(parts)
        if len(_ENTRIES) >= _ENTRIES_MAX:
            _ENTRIES.clear()
        _ENTRIES[key] = entries
    return entries


def _read_packed_header(mv: memoryview, off: int, n: int,
                        raw_trace: bool = False) -> tuple[Delivery, list[tuple[str, np.dtype, tuple]]]:
    """The delivery (no tensors yet) and its tensors' (name, dtype, shape) from the packed header of
    `n` bytes at `off`; every field checked, WireError otherwise."""
    if n < _PACKED_HEAD.size:
        raise WireError(f"packed delivery header of {n} bytes (at least {_PACKED_HEAD.size})")
    magic, deadline, sent, flags, count, *lengths = _PACKED_HEAD.unpack_from(mv, off)
    if magic != _PACKED_MAGIC:
        raise WireError("packed delivery header does not start with the tierplan magic")
    if flags > 1:
        raise WireError(f"packed delivery header flags {flags} (only 1 = empty is defined)")
    at, end = off + _PACKED_HEAD.size, off + n
    if at + sum(lengths) > end:
        raise WireError("packed delivery header's texts run past its end")
    raw = bytes(mv[at:at + sum(lengths)])
    at += len(raw)
    try:
        texts, pos = [], 0
        for k in lengths:
            texts.append(raw[pos:pos + k].decode())
            pos += k
        specs = []
        for _ in range(count):
            if at + _PACKED_TENSOR.size > end:
                raise WireError("packed delivery header ends inside its tensor list")
            name_len, code, ndim = _PACKED_TENSOR.unpack_from(mv, at)
            at += _PACKED_TENSOR.size
            if ndim > _MAX_DIMS:
                raise WireError(f"tensor of {ndim} dimensions (at most {_MAX_DIMS})")
            dims = _DIMS[ndim]
            if at + dims.size + name_len > end:
                raise WireError("packed delivery header ends inside a tensor's entry")
            shape = dims.unpack_from(mv, at)
            at += dims.size
            name = bytes(mv[at:at + name_len]).decode()
            at += name_len
            dtype_text = _CODE_DTYPES.get(code)
            if dtype_text is None:
                raise WireError(f"tensor {name[:64]!r}: dtype code {code} is not one of 1-{len(_CODE_DTYPES)}")
            specs.append((_check_name(name, "tensor name"), dtype_of(dtype_text), shape))
    except UnicodeDecodeError:
        raise WireError("packed delivery header holds text that is not UTF-8") from None
    rid, src, dst, branch, error, trace = texts
    return _checked_delivery(rid, src, dst, branch, deadline, sent, error, bool(flags), trace, raw_trace), specs


def _layout(d: Delivery) -> tuple[bytes, list[tuple[int, np.ndarray]], int]:
    """The packed form's header, each non-empty tensor with its byte offset, and the total length."""
    arrays = {k: np.ascontiguousarray(v) for k, v in d.tensors.items()}
    header = _packed_header(d, arrays)
    off = _PACK_PREFIX.size + len(header)
    placed = []
    for a in arrays.values():
        off += -off % _PACK_ALIGN
        if a.nbytes:
            placed.append((off, a))
            off += a.nbytes
    return header, placed, off


def pack_delivery(d: Delivery) -> bytes:
    """A delivery as one message: header length (uint32 LE), the packed header (_PACKED_HEAD), then each tensor's bytes.

    Each tensor starts at a multiple of 64 bytes, so the receiver's arrays are views of the
    received message (no copy) and aligned. The tensor bytes are copied once, by the join.
    """
    header, placed, total = _layout(d)
    parts: list = [_PACK_PREFIX.pack(len(header)), header]
    off = _PACK_PREFIX.size + len(header)
    for at, a in placed:
        parts.append(bytes(at - off))
        parts.append(a.reshape(-1).view(np.uint8).data)
        off = at + a.nbytes
    parts.append(bytes(total - off))
    return b"".join(parts)


def packed_layout(d: Delivery) -> tuple:
    """The packed form's layout, for `packed_size` and `pack_delivery_into` (worked out once per send)."""
    return _layout(d)


def packed_size(d: Delivery, layout: tuple | None = None) -> int:
    """Length of `pack_delivery(d)` (what `pack_delivery_into` needs); `layout` from `packed_layout(d)`."""
    return (layout or _layout(d))[2]


def pack_delivery_into(d: Delivery, buf: memoryview, layout: tuple | None = None) -> int:
    """Write `pack_delivery(d)` into `buf` (a shared-memory segment) with one copy of the tensor
    bytes; returns its length. Padding bytes are left as they are (the reader skips them).
    `layout`: `packed_layout(d)` when already worked out (d unchanged since)."""
    header, placed, total = layout or _layout(d)
    if total > len(buf):
        raise ValueError(f"packed delivery needs {total} bytes, buffer holds {len(buf)}")
    _PACK_PREFIX.pack_into(buf, 0, len(header))
    buf[_PACK_PREFIX.size:_PACK_PREFIX.size + len(header)] = header
    for at, a in placed:
        dst = np.frombuffer(buf, dtype=np.uint8, count=a.nbytes, offset=at)
        dst[:] = a.reshape(-1).view(np.uint8)
        del dst   # no export of `buf` may outlive the call (the segment must stay closable)
    return total


def pack_header_into(d: Delivery, buf: memoryview, base: int, offsets: list[int] | None = None) -> int | None:
    """Write the packed header of `d` into `buf` when its tensors already lie in `buf` where
    `pack_delivery_into` would put them; returns the packed length, or None when they do not (then
    pack it the usual way). `base`: the address of buf[0]; `offsets`: where each tensor lies in
    `buf`, when the caller laid them out itself (runtime.localwire.Placed: no address lookups). The
    header's length reaches to where the first tensor starts (the bytes after its fields are padding)."""
    arrays = d.tensors
    if not arrays or any(not a.flags.c_contiguous or not a.nbytes for a in arrays.values()):
        return None
    at = offsets if offsets is not None else [a.ctypes.data - base for a in arrays.values()]
    if len(at) != len(arrays):
        return None
    first_at = at[0]
    header = _packed_header(d, arrays)
    if _PACK_PREFIX.size + len(header) > first_at:
        return None
    off = first_at
    for a, a_at in zip(arrays.values(), at):     # each tensor where `_layout` puts it
        off += -off % _PACK_ALIGN
        if a_at != off:
            return None
        off += a.nbytes
    if off > len(buf):
        return None
    _PACK_PREFIX.pack_into(buf, 0, first_at - _PACK_PREFIX.size)     # the rest of the header's length: padding
    buf[_PACK_PREFIX.size:_PACK_PREFIX.size + len(header)] = header
    return off


def unpack_delivery(buf: bytes | memoryview | np.ndarray, copy: bool = False, raw_trace: bool = False) -> Delivery:
    """The inverse of `pack_delivery`; the arrays are read-only views of `buf`, or with `copy` arrays
    of their own (for a shared-memory segment the sender will reuse). `raw_trace`: the trace as one
    RawSteps element, not parsed (see RawSteps)."""
    mv = buf.data if isinstance(buf, np.ndarray) else memoryview(buf)
    size = len(buf)
    if size < _PACK_PREFIX.size:
        raise WireError(f"packed delivery of {size} bytes has no header")
    (n,) = _PACK_PREFIX.unpack_from(mv, 0)
    off = _PACK_PREFIX.size
    if n > size - off:
        raise WireError(f"packed delivery of {size} bytes claims a {n}-byte header")
    d, specs = _read_packed_header(mv, off, n, raw_trace)
    off += n
    for name, dtype, shape in specs:
        need = _nbytes(name, dtype, shape)
        off += -off % _PACK_ALIGN
        if off + need > size:
            raise WireError(f"packed delivery of {size} bytes ends inside tensor {name[:64]!r}")
        if need:
            view = np.frombuffer(buf, dtype=dtype, count=need // dtype.itemsize, offset=off).reshape(shape)
            d.tensors[name] = view.copy() if copy else view
        else:
            d.tensors[name] = np.zeros(shape, dtype=dtype)
        off += need
    if off != size:
        raise WireError(f"packed delivery of {size} bytes holds {off} bytes of header and tensors")
    return d


def raw_messages(d: Delivery, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """A delivery as raw stream messages: the header Bundle, then each tensor's bytes in chunks."""
    arrays = {k: np.ascontiguousarray(v) for k, v in d.tensors.items()}
    out = [_header(d, arrays)]
    for a in arrays.values():
        buf = a.reshape(-1).view(np.uint8).data if a.size else memoryview(b"")
        out.extend(bytes(buf[i:i + chunk_bytes]) for i in range(0, len(buf), chunk_bytes))
    return out


def raw_to_delivery(messages: Iterable[bytes]) -> Delivery:
    """Reassemble a delivery from raw stream messages (the inverse of `raw_messages`)."""
    it = iter(messages)
    first = next(it, None)
    if first is None:
        raise WireError("empty delivery stream")
    frames = _header_frames(first)
    d = _delivery_of(frames[0])
    total = 0
    for f in frames:
        if not f.name:
            continue
        _check_name(f.name, "tensor name")
        dtype = dtype_of(f.dtype)
        shape = tuple(f.shape)
        need = _nbytes(f.name, dtype, shape)
        total += need
        if total > MAX_DELIVERY_BYTES:
            raise WireError(f"delivery of more than {MAX_DELIVERY_BYTES} bytes")
        parts, got = [], 0
        while got < need:
            chunk = next(it, None)
            if chunk is None:
                raise WireError(f"stream ended after {got} of tensor {f.name[:64]!r}'s {need} bytes")
            parts.append(chunk)
            got += len(chunk)
        check_tensor_bytes(f.name, need, got)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        d.tensors[f.name] = np.frombuffer(raw, dtype=dtype).reshape(shape) if need else np.zeros(shape, dtype=dtype)
    for extra in it:   # wait for the sender to close the stream: a paced (emulated) link delivers then
        if extra:
            raise WireError("stream carries bytes beyond its tensors")
    return d


def tensor_to_pb(name: str, arr: np.ndarray) -> pb.Tensor:
    """A whole tensor as one message (front door)."""
    arr = np.ascontiguousarray(arr)
    return pb.Tensor(name=name, dtype=dtype_name(arr.dtype), shape=list(arr.shape), data=arr.tobytes())


def pb_to_tensor(t: pb.Tensor) -> np.ndarray:
    """The array of a front-door Tensor message; WireError for a dtype outside WIRE_DTYPES or a shape
    that does not match the bytes."""
    dtype = dtype_of(t.dtype)
    shape = tuple(t.shape)
    check_tensor_bytes(t.name, _nbytes(t.name, dtype, shape), len(t.data))
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)
