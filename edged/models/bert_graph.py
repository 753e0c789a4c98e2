"""A BERT sentence encoder as an ONNX graph, built from its weights with the ``onnx`` package.

The graph is the whole sentence-transformers pipeline, so onnxruntime returns finished
vectors: token + position (+ token type 0) embeddings, LayerNormalization, N encoder layers
(multi-head self-attention with the padding masked out, GELU via Erf, post-LayerNorm
residuals), mean pooling over the attention mask, L2 normalisation.

Inputs ``input_ids`` and ``attention_mask`` (int64 ``[batch, sequence]``); output
``sentence_embedding`` (float ``[batch, hidden]``). Token type ids are always 0 for a single
sentence, so that row of the token-type table is folded into the position table.
Linear weights are stored transposed (``x @ W``) and the attention scale is folded into
the query projection, so the graph does no transposes or scaling of weights at run time.

The file is written in pieces, so the build never holds a second copy of the weights: the
graph without its weights first, then each weight as a ``ModelProto`` holding only
``graph.initializer[0]``, its bytes written straight from numpy. Protobuf parsers merge
repeated occurrences of a message field, so onnxruntime (and ``onnx.load``) read one graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from edged.errors import BadRequest
from edged.models.safetensors_file import float32

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import onnx

OPSET = 17  # LayerNormalization
IR_VERSION = 8  # what onnxruntime 1.12 and later read
MASKED = 10000.0  # subtracted from the attention scores of padding: exp() of that is 0


@dataclass(frozen=True)
class BertShape:
    layers: int
    heads: int
    hidden: int
    eps: float

    @property
    def head_size(self) -> int:
        return self.hidden // self.heads


def shape_of(config: Mapping[str, Any]) -> BertShape:
    """The encoder's shape from a Hugging Face ``config.json``; refuses what the graph does
    not implement (another architecture, activation or position embedding)."""
    wanted = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in wanted.items():
        if config.get(key, value) != value:
            raise BadRequest(f"config.json: {key} = {config.get(key)!r}; only {value!r} is "
                             "supported", code="unsupported_model")
    try:
        shape = BertShape(int(config["num_hidden_layers"]), int(config["num_attention_heads"]),
                          int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12)))
    except (KeyError, TypeError, ValueError) as e:
        raise BadRequest(f"config.json: cannot read the encoder's shape ({e!r})",
                         code="unsupported_model") from None
    if shape.hidden % shape.heads:
        raise BadRequest(f"config.json: hidden_size {shape.hidden} is not a multiple of "
                         f"num_attention_heads {shape.heads}", code="unsupported_model")
    return shape


class _Graph:
    """Nodes and initializers, with generated names."""

    def __init__(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self._weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, npt.NDArray[Any]] = {}
        self._count = 0

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper
        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        """An initializer; shared constants (shapes, axes) are kept on first use only."""
        self.initializers.setdefault(name, value)
        return name

    def weight(self, name: str) -> npt.NDArray[np.float32]:
        return float32(self._weights, name)

    def linear(self, x: str, prefix: str, scale: float = 1.0) -> str:
        import numpy as np
        w = np.ascontiguousarray(self.weight(f"{prefix}.weight").T * np.float32(scale))
        b = self.weight(f"{prefix}.bias") * np.float32(scale)
        return self.op("Add", self.op("MatMul", x, self.const(f"{prefix}.w", w)),
                       self.const(f"{prefix}.b", b))

    def norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", x, self.const(f"{prefix}.gamma",
                                                           self.weight(f"{prefix}.weight")),
                       self.const(f"{prefix}.beta", self.weight(f"{prefix}.bias")),
                       axis=-1, epsilon=eps)


def _ints(*values: int) -> npt.NDArray[np.int64]:
    import numpy as np
    return np.array(values, dtype=np.int64)


def _scalar(value: float) -> npt.NDArray[np.float32]:
    import numpy as np
    return np.array(value, dtype=np.float32)


def _embeddings(g: _Graph, shape: BertShape) -> str:
    positions = g.weight("embeddings.position_embeddings.weight") \
        + g.weight("embeddings.token_type_embeddings.weight")[0]
    words = g.op("Gather", g.const("embeddings.words", g.weight(
        "embeddings.word_embeddings.weight")), "input_ids")
    length = g.op("Slice", g.op("Shape", "input_ids"), g.const("one", _ints(1)),
                  g.const("two", _ints(2)))
    used = g.op("Slice", g.const("embeddings.positions", positions), g.const("zero", _ints(0)),
                length, g.const("axis0", _ints(0)))
    return g.norm(g.op("Add", words, used), "embeddings.LayerNorm", shape.eps)


def _heads(g: _Graph, x: str, shape: BertShape, perm: list[int]) -> str:
    """[batch, seq, hidden] -> [batch, heads, seq, head] (or [.., head, seq] for keys)."""
    split = g.op("Reshape", x, g.const("heads_shape", _ints(0, 0, shape.heads, shape.head_size)))
    return g.op("Transpose", split, perm=perm)


def _attention(g: _Graph, x: str, bias: str, prefix: str, shape: BertShape) -> str:
    scale = 1.0 / math.sqrt(shape.head_size)
    q = _heads(g, g.linear(x, f"{prefix}.self.query", scale), shape, [0, 2, 1, 3])
    k = _heads(g, g.linear(x, f"{prefix}.self.key"), shape, [0, 2, 3, 1])
    v = _heads(g, g.linear(x, f"{prefix}.self.value"), shape, [0, 2, 1, 3])
    probs = g.op("Softmax", g.op("Add", g.op("MatMul", q, k), bias), axis=-1)
    merged = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    joined = g.op("Reshape", merged, g.const("hidden_shape", _ints(0, 0, shape.hidden)))
    out = g.linear(joined, f"{prefix}.output.dense")
    return g.norm(g.op("Add", out, x), f"{prefix}.output.LayerNorm", shape.eps)


def _gelu(g: _Graph, x: str) -> str:
    """0.5 x (1 + erf(x / sqrt 2)): BERT's exact GELU (onnxruntime fuses it into one op)."""
    erf = g.op("Erf", g.op("Div", x, g.const("sqrt2", _scalar(math.sqrt(2)))))
    return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.const("one_f", _scalar(1.0)))),
                g.const("half", _scalar(0.5)))


def _layer(g: _Graph, x: str, bias: str, index: int, shape: BertShape) -> str:
    prefix = f"encoder.layer.{index}"
    attended = _attention(g, x, bias, f"{prefix}.attention", shape)
    inner = _gelu(g, g.linear(attended, f"{prefix}.intermediate.dense"))
    out = g.linear(inner, f"{prefix}.output.dense")
    return g.norm(g.op("Add", out, attended), f"{prefix}.output.LayerNorm", shape.eps)


def _pool(g: _Graph, x: str, mask: str) -> str:
    """Mean over the real tokens, then L2 normalisation (sentence-transformers' Pooling and
    Normalize modules)."""
    weights = g.op("Unsqueeze", mask, g.const("axis2", _ints(2)))
    total = g.op("ReduceSum", g.op("Mul", x, weights), g.const("axis1", _ints(1)), keepdims=0)
    count = g.op("Max", g.op("ReduceSum", weights, "axis1", keepdims=0),
                 g.const("tiny_count", _scalar(1e-9)))
    mean = g.op("Div", total, count)
    norm = g.op("Max", g.op("ReduceL2", mean, axes=[1], keepdims=1),
                g.const("tiny_norm", _scalar(1e-12)))
    return g.op("Div", mean, norm)


@dataclass(frozen=True)
class Built:
    skeleton: onnx.ModelProto  # the graph without its initializers
    initializers: Mapping[str, npt.NDArray[Any]]

    def write(self, out: BinaryIO) -> None:
        out.write(self.skeleton.SerializeToString())
        for name, value in self.initializers.items():
            _write_initializer(out, name, value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _varint(number << 3 | 2) + _varint(size)


def _write_initializer(out: BinaryIO, name: str, value: npt.NDArray[Any]) -> None:
    """``ModelProto{graph (7): {initializer (5): TensorProto}}`` with the tensor's raw_data
    (field 9) written from the array's own buffer."""
    import numpy as np
    from onnx import TensorProto, helper
    data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    header = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(data.dtype),
                         dims=data.shape)
    head = header.SerializeToString()
    raw = _field(9, data.nbytes)
    tensor_size = len(head) + len(raw) + data.nbytes
    initializer = _field(5, tensor_size)
    out.write(_field(7, len(initializer) + tensor_size) + initializer + head + raw)
    out.write(data.reshape(-1).data.cast("B"))


def build(weights: Mapping[str, npt.NDArray[Any]], shape: BertShape) -> Built:
    """The encoder graph over ``weights`` (Hugging Face ``BertModel`` tensor names, with or
    without a ``bert.`` prefix). Raises ``IntegrityError`` naming a missing tensor."""
    from onnx import TensorProto, helper
    g = _Graph({name.removeprefix("bert."): value for name, value in weights.items()})
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    padding = g.op("Sub", mask, g.const("one_f", _scalar(1.0)))  # 0 for tokens, -1 for padding
    bias = g.op("Unsqueeze", g.op("Mul", padding, g.const("masked", _scalar(MASKED))),
                g.const("axes12", _ints(1, 2)))
    x = _embeddings(g, shape)
    for index in range(shape.layers):
        x = _layer(g, x, bias, index, shape)
    g.nodes.append(helper.make_node("Identity", [_pool(g, x, mask)], ["sentence_embedding"]))
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes, "sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dims)],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                       ["batch", shape.hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edged")
    model.ir_version = IR_VERSION
    return Built(model, g.initializers)
