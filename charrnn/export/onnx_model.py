"""ONNX graphs of a CharRNN, built node by node with onnx.helper (no torch exporter), and their check against torch.

Two models (opset 17), the vocabulary and config in `metadata_props` (keys `charrnn.*`):

- step.onnx: ids int64 [batch], h float32 [layers, batch, hidden] (LSTM: and c) ->
  logits float32 [batch, vocab], h_out (and c_out). One character per stream.
- prefill.onnx: ids int64 [batch, time], h (and c) -> logits [batch, time, vocab], h_out (and c_out): a Scan
  over time whose body is the step graph.

The equations are charrnn.model.network's. Layer 1's input product is a row lookup (Gather) in a table made at export
time: tanh `embed + b^1`; GRU `embed W_ih^T + b_ih` (gates r, z, n); LSTM `embed W_ih^T + b_ih + b_hh` (gates
i, f, g, o). Other products are Gemm with the weight as stored ([out, in], transB=1).

    tanh:  h' = tanh(W_hh h + x_proj)
    GRU:   r = σ(x_r + W_hr h + b_hr), z = σ(x_z + W_hz h + b_hz), n = tanh(x_n + r ⊙ (W_hn h + b_hn)),
           h' = (1 − z) ⊙ n + z ⊙ h
    LSTM:  [i f g o] = x_proj + W_hh h; c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g); h' = σ(o) ⊙ tanh(c')
    logits = W_hy h^L + b_y
"""

from __future__ import annotations

import json
from typing import Optional

from ..errors import CharrnnError

OPSET = 17
STEP = "step.onnx"
PREFILL = "prefill.onnx"
TOLERANCE = 1e-4  # teacher-forced logits, max absolute difference from torch's
CHECK_CHARS = 2000
GREEDY_CHARS = 500


class ExportCheckError(CharrnnError):
    """The exported model does not compute what torch computes (exit 1); nothing is written."""


def _weights(model) -> dict:
    return {name: t.detach().to("cpu").float().numpy() for name, t in model.state_dict().items()}


class _Graph:
    """Nodes and initializers being collected; `op` adds a node and returns its output name(s)."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.inits, self.prefix, self.count = [], {}, prefix, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, name: str, array) -> str:
        self.inits[name] = array
        return name

    def op(self, kind: str, inputs: list, hint: str = "", outputs: Optional[list] = None, n_out: int = 1, **attrs):
        from onnx import helper

        outs = outputs or [self.name(hint or kind.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(kind, inputs, outs, **attrs))
        return outs if n_out > 1 or (outputs and len(outputs) > 1) else outs[0]


def _constants(g: _Graph, model) -> dict:
    """The initializers every step needs, in the outer graph (a Scan body reads them from there)."""
    import numpy as np

    cfg = model.config
    w = _weights(model)
    L, H = cfg.num_layers, cfg.hidden_size
    names = {"layer": [g.const(f"layer_{l}", np.array(l, dtype=np.int64)) for l in range(L)],
             "axis0": g.const("axes_0", np.array([0], dtype=np.int64)),
             "head_w": g.const("head.weight", w["head.weight"]), "head_b": g.const("head.bias", w["head.bias"])}
    embed = w["embed.weight"].astype(np.float64)
    if cfg.cell == "tanh":
        names["table"] = g.const("table_0", (embed + w["bias.0"]).astype(np.float32))
        for l in range(L):
            names[f"w_hh{l}"] = g.const(f"w_hh.{l}", w[f"w_hh.{l}"])
            if l:
                names[f"w_xh{l}"] = g.const(f"w_xh.{l - 1}", w[f"w_xh.{l - 1}"])
                names[f"b{l}"] = g.const(f"bias.{l}", w[f"bias.{l}"])
        return names
    gates = 3 if cfg.cell == "gru" else 4
    names["split"] = g.const("gate_sizes", np.array([H] * gates, dtype=np.int64))
    if cfg.cell == "gru":
        names["one"] = g.const("one", np.array(1.0, dtype=np.float32))
    for l in range(L):
        w_ih, b_ih = w[f"rnn.weight_ih_l{l}"], w[f"rnn.bias_ih_l{l}"]
        w_hh, b_hh = w[f"rnn.weight_hh_l{l}"], w[f"rnn.bias_hh_l{l}"]
        # LSTM: both biases go into the input projection; GRU: b_hn stays inside r ⊙ (W_hn h + b_hn)
        b_in = (b_ih.astype(np.float64) + b_hh) if cfg.cell == "lstm" else b_ih.astype(np.float64)
        if l == 0:
            names["table"] = g.const("table_0", (embed @ w_ih.T.astype(np.float64) + b_in).astype(np.float32))
        else:
            names[f"w_ih{l}"] = g.const(f"rnn.weight_ih_l{l}", w_ih)
            names[f"b_in{l}"] = g.const(f"input_bias_l{l}", b_in.astype(np.float32))
        names[f"w_hh{l}"] = g.const(f"rnn.weight_hh_l{l}", w_hh)
        if cfg.cell == "gru":
            names[f"b_hh{l}"] = g.const(f"rnn.bias_hh_l{l}", b_hh)
    return names


def _step_nodes(g: _Graph, cell: str, L: int, k: dict, ids: str, h: str, c: Optional[str],
                outputs: list) -> None:
    """Nodes for one time step: (ids, h[, c]) -> outputs = [logits, h_out(, c_out)]."""
    x, new_h, new_c = None, [], []
    for l in range(L):
        h_l = g.op("Gather", [h, k["layer"][l]], f"h{l}", axis=0)  # [B, H]
        if l == 0:
            proj = g.op("Gather", [k["table"], ids], "lookup", axis=0)  # the row lookup: layer 1's input product
        elif cell == "tanh":
            proj = g.op("Gemm", [x, k[f"w_xh{l}"], k[f"b{l}"]], f"xproj{l}", transB=1)
        else:
            proj = g.op("Gemm", [x, k[f"w_ih{l}"], k[f"b_in{l}"]], f"xproj{l}", transB=1)
        if cell == "tanh":
            x = g.op("Tanh", [g.op("Gemm", [h_l, k[f"w_hh{l}"], proj], f"pre{l}", transB=1)], f"h_new{l}")
        elif cell == "gru":
            hh = g.op("Gemm", [h_l, k[f"w_hh{l}"], k[f"b_hh{l}"]], f"hproj{l}", transB=1)
            x_r, x_z, x_n = g.op("Split", [proj, k["split"]], f"x_gates{l}", n_out=3, axis=1)
            h_r, h_z, h_n = g.op("Split", [hh, k["split"]], f"h_gates{l}", n_out=3, axis=1)
            r = g.op("Sigmoid", [g.op("Add", [x_r, h_r])], f"r{l}")
            z = g.op("Sigmoid", [g.op("Add", [x_z, h_z])], f"z{l}")
            n = g.op("Tanh", [g.op("Add", [x_n, g.op("Mul", [r, h_n])])], f"n{l}")
            x = g.op("Add", [g.op("Mul", [g.op("Sub", [k["one"], z]), n]), g.op("Mul", [z, h_l])], f"h_new{l}")
        else:
            c_l = g.op("Gather", [c, k["layer"][l]], f"c{l}", axis=0)
            pre = g.op("Gemm", [h_l, k[f"w_hh{l}"], proj], f"gates{l}", transB=1)
            i, f, gg, o = g.op("Split", [pre, k["split"]], f"gate{l}", n_out=4, axis=1)
            cell_new = g.op("Add", [g.op("Mul", [g.op("Sigmoid", [f]), c_l]),
                                    g.op("Mul", [g.op("Sigmoid", [i]), g.op("Tanh", [gg])])], f"c_new{l}")
            x = g.op("Mul", [g.op("Sigmoid", [o]), g.op("Tanh", [cell_new])], f"h_new{l}")
            new_c.append(g.op("Unsqueeze", [cell_new, k["axis0"]]))
        new_h.append(g.op("Unsqueeze", [x, k["axis0"]]))
    g.op("Gemm", [x, k["head_w"], k["head_b"]], outputs=[outputs[0]], transB=1)
    g.op("Concat", new_h, outputs=[outputs[1]], axis=0)
    if cell == "lstm":
        g.op("Concat", new_c, outputs=[outputs[2]], axis=0)


def _metadata(ckpt: dict, graph: str) -> dict:
    from ..store.modelfile import metadata_for

    meta = {f"charrnn.{key}": value for key, value in metadata_for(ckpt).items()}
    meta["charrnn.graph"] = graph
    return meta


def build_models(ckpt: dict, model) -> dict:
    """{"step.onnx": ModelProto, "prefill.onnx": ModelProto} for a CharRNN (eval mode, CPU)."""
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.config
    cell, L, H, V = cfg.cell, cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    state_names = ["h", "c"] if cell == "lstm" else ["h"]

    def state_type(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [L, "batch", H])

    models = {}
    for graph_name in (STEP, PREFILL):
        g = _Graph()
        k = _constants(g, model)
        if graph_name == STEP:
            inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])]
            outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", V])]
            _step_nodes(g, cell, L, k, "ids", "h", "c" if cell == "lstm" else None,
                        ["logits"] + [f"{s}_out" for s in state_names])
        else:
            body = _Graph(prefix="t_")
            body_in = [state_type(f"t_{s}") for s in state_names]
            body_in.append(helper.make_tensor_value_info("t_ids", TensorProto.INT64, ["batch"]))
            body_outs = [f"t_{s}_out" for s in state_names] + ["t_logits"]
            _step_nodes(body, cell, L, k, "t_ids", "t_h", "t_c" if cell == "lstm" else None,
                        [body_outs[-1]] + body_outs[:-1])
            body_graph = helper.make_graph(
                body.nodes, "charrnn_step_body", body_in,
                [state_type(name) for name in body_outs[:-1]]
                + [helper.make_tensor_value_info("t_logits", TensorProto.FLOAT, ["batch", V])])
            g.op("Scan", [*state_names, "ids"], outputs=[f"{s}_out" for s in state_names] + ["logits"],
                 body=body_graph, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1])
            inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "time"])]
            outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", V])]
        inputs += [state_type(s) for s in state_names]
        outputs += [state_type(f"{s}_out") for s in state_names]
        initializers = [numpy_helper.from_array(array, name) for name, array in g.inits.items()]
        graph = helper.make_graph(g.nodes, f"charrnn_{graph_name[:-5]}", inputs, outputs, initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charrnn",
                                  doc_string=f"charrnn {cell} {L}x{H} character model, {graph_name[:-5]} graph")
        proto.ir_version = 8  # what opset 17 needs; readable by onnxruntime >= 1.13
        helper.set_model_props(proto, _metadata(ckpt, graph_name[:-5]))
        models[graph_name] = proto
    return models


def check_models(models: dict) -> None:
    import onnx

    for name, proto in models.items():
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as exc:  # onnx's ValidationError and shape-inference errors
            raise ExportCheckError(f"the ONNX {name} graph is invalid: {str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------------------------
# verification against torch


def check_text(ckpt: dict, vocab, model, n: int = CHECK_CHARS + 1) -> str:
    """`n` characters to check with: the start of the run's corpus where it is a readable file (characters outside
    the vocabulary dropped), else text generated by the model itself (seed 0)."""
    import os

    import torch

    source = (ckpt.get("corpus") or {}).get("source")
    text = ""
    if isinstance(source, str) and os.path.isfile(source):
        try:
            with open(source, "rb") as f:
                raw = f.read(8 * n + 64)
            text = "".join(ch for ch in raw.decode("utf-8", errors="ignore") if ch in vocab.index)[:n]
        except OSError:
            text = ""
    if len(text) >= n:
        return text
    gen = torch.Generator().manual_seed(0)
    state = model.init_state(1)
    ids = [0]
    with torch.no_grad():
        for _ in range(n - 1):
            logits, state = model.step(torch.tensor(ids[-1:]), state)
            ids.append(int(torch.multinomial(torch.softmax(logits[0].double(), -1), 1, generator=gen)))
    return vocab.decode(ids)


def _sessions(models: dict) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # one stream, one character at a time (see export_onnx)
    return {name: ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            for name, proto in models.items()}


def _feed(cell: str, ids, state) -> dict:
    state = state.numpy() if hasattr(state, "numpy") else state
    if cell == "lstm":
        return {"ids": ids, "h": state[0], "c": state[1]}
    return {"ids": ids, "h": state}


def _state(cell: str, outs: list):
    import numpy as np

    return np.stack(outs[1:3]) if cell == "lstm" else outs[1]


def verify(models: dict, model, vocab, text: str, batch: int = 1, greedy: int = GREEDY_CHARS) -> dict:
    """Compare the ONNX models with torch: teacher-forced logits over `text` (prefill and step, `batch` identical
    streams) within TOLERANCE, then `greedy` characters of greedy decoding equal. Returns the largest
    differences; ExportCheckError on a mismatch."""
    import numpy as np
    import torch

    cell = model.config.cell
    sess = _sessions(models)
    ids = np.asarray(vocab.encode(text), dtype=np.int64)
    inputs, T = ids[:-1], len(ids) - 1
    x = np.tile(inputs, (batch, 1))
    with torch.no_grad():
        want, _, want_state = model(torch.from_numpy(x), model.init_state(batch))
    want = want.numpy()
    zero = model.init_state(batch).numpy()
    outs = sess[PREFILL].run(None, _feed(cell, x, zero))
    prefill_diff = max(float(np.abs(outs[0] - want).max()),
                       float(np.abs(_state(cell, outs) - want_state.numpy()).max()))
    if not prefill_diff <= TOLERANCE:
        raise ExportCheckError(f"ONNX check failed: prefill.onnx's logits differ from torch's by {prefill_diff:.3g} "
                               f"over {T} characters (limit {TOLERANCE:g}); nothing was written")
    state, step_diff = zero, 0.0
    for t in range(T):
        outs = sess[STEP].run(None, _feed(cell, x[:, t], state))
        step_diff = max(step_diff, float(np.abs(outs[0] - want[:, t]).max()))
        state = _state(cell, outs)
    if not step_diff <= TOLERANCE:
        raise ExportCheckError(f"ONNX check failed: step.onnx's logits differ from torch's by {step_diff:.3g} over "
                               f"{T} characters (limit {TOLERANCE:g}); nothing was written")
    # greedy decoding from the state after the text, by each side on its own
    ort_state, torch_state = state, want_state
    last = np.full(batch, ids[-1], dtype=np.int64)
    ort_ids, torch_ids = [], []
    ort_next, torch_next = last, torch.from_numpy(last)
    with torch.no_grad():
        for _ in range(greedy):
            outs = sess[STEP].run(None, _feed(cell, ort_next, ort_state))
            ort_state, ort_next = _state(cell, outs), outs[0].argmax(-1).astype(np.int64)
            logits, torch_state = model.step(torch_next, torch_state)
            torch_next = logits.argmax(-1)
            ort_ids.append(ort_next[0])
            torch_ids.append(int(torch_next[0]))
    if [int(i) for i in ort_ids] != torch_ids:
        at = next(i for i, (a, b) in enumerate(zip(ort_ids, torch_ids)) if int(a) != b)
        raise ExportCheckError(f"ONNX check failed: greedy decoding departs from torch's at character {at + 1} of "
                               f"{greedy}; nothing was written")
    return {"prefill_max_diff": prefill_diff, "step_max_diff": step_diff, "greedy_chars": greedy,
            "chars": T, "greedy_text": vocab.decode(torch_ids)}


def model_bytes(models: dict) -> dict:
    return {name: proto.SerializeToString() for name, proto in models.items()}


def export_onnx(ckpt: dict, model, vocab) -> tuple[dict, dict]:
    """Build, check and verify the two graphs; returns ({file name: bytes}, the verification's numbers)."""
    import torch

    models = build_models(ckpt, model)
    check_models(models)
    # the check steps one character at a time: products too small for a second thread to pay for its
    # synchronisation, which on a loaded machine made torch's steps tens of times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = verify(models, model, vocab, check_text(ckpt, vocab, model))
    finally:
        torch.set_num_threads(threads)
    return model_bytes(models), report


def read_metadata(proto) -> dict:
    """The `charrnn.*` metadata of an ONNX model, JSON values decoded (vocab, model_config)."""
    meta = {p.key[len("charrnn."):]: p.value for p in proto.metadata_props if p.key.startswith("charrnn.")}
    for key in ("vocab", "model_config"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta
