"""Seeing what a model learned: per-character surprisal, hidden-unit activations, and units that track a pattern.

`trace(model, ids)` runs the model over a text one character at a time (B = 1, the state carried throughout) and
returns, for every character, its surprisal in nats (-ln p(c_i | c_<i); the first character is context only,
so it has none) and every layer's hidden state h^l_i after reading it. `top_neurons` ranks hidden units by the
Pearson correlation of their activation with a pattern signal such as "inside double quotes" (the quote-detection
cell of char-rnn's blog post). A `View` is text with one value per character, rendered three ways: rich colours
for the terminal, a digit ruler when colour is off (NO_COLOR, or stdout not a terminal), and a self-contained
HTML page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..config import TOP_NEURONS, VIEW_MAX_CHARS
from ..errors import DataError, UsageError

from ..store.metrics import LN2
MAX_BITS = 8.0  # surprisal colour scale saturates here


# ----------------------------------------------------------------------------------------------------------------
# running the model


@dataclass
class Trace:
    nats: np.ndarray  # (N,) surprisal of each character in nats; NaN for the first (nothing predicts it)
    hidden: np.ndarray  # (L, N, H) hidden state of every layer after reading each character


def hidden_states(model, ids, state=None):
    """Every layer's hidden state at every step: ids (B, T) -> hidden (L, B, T, H), logits (B, T, V), final state.

    Steps the model one character at a time with `model.step`, whose state after step t is (L, B, H) for
    tanh/GRU and (2, L, B, H) for LSTM (h then c), i.e. all layers at time t; `forward` returns only the top
    layer's outputs, so this is the way to see inside every layer. Evaluation mode (no dropout)."""
    import torch

    B, T = ids.shape
    if state is None:
        state = model.init_state(B, ids.device)
    lstm = model.config.cell == "lstm"
    hidden, logits = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for t in range(T):
                out, state = model.step(ids[:, t], state)
                logits.append(out)  # B, V
                hidden.append(state[0] if lstm else state)  # L, B, H
    finally:
        model.train(was_training)
    return torch.stack(hidden, dim=2), torch.stack(logits, dim=1), state


def trace(model, ids: np.ndarray) -> Trace:
    """Surprisal (nats) and all layers' hidden states for each character of ids (1-D), state carried."""
    import torch

    x = torch.from_numpy(np.asarray(ids).astype(np.int64)).view(1, -1)
    hidden, logits, _ = hidden_states(model, x)
    log_probs = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # prediction for character i+1 from 0..i
    nats = np.full(len(ids), np.nan)
    if len(ids) > 1:
        nats[1:] = (-log_probs.gather(1, x[0, 1:].view(-1, 1)).view(-1)).numpy()
    return Trace(nats=nats, hidden=hidden[:, 0].float().numpy())


# ----------------------------------------------------------------------------------------------------------------
# patterns a unit might track


def _inside(text: str, open_char: str, close_char: str) -> np.ndarray:
    """1.0 for characters inside open...close (nesting counted; the delimiters themselves count as inside)."""
    out = np.zeros(len(text))
    depth = 0
    for i, c in enumerate(text):
        if c == open_char and (open_char != close_char or depth == 0):
            depth += 1
            out[i] = 1.0
            continue
        if c == close_char and depth > 0:
            out[i] = 1.0
            depth -= 1
            continue
        out[i] = 1.0 if depth > 0 else 0.0
    return out


def _line_position(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    column = 0
    for i, c in enumerate(text):
        out[i] = column
        column = 0 if c == "\n" else column + 1
    return out


PATTERNS: dict[str, tuple[str, Callable[[str], np.ndarray]]] = {
    "quotes": ('inside "double quotes"', lambda t: _inside(t, '"', '"')),
    "single-quotes": ("inside 'single quotes'", lambda t: _inside(t, "'", "'")),
    "parens": ("inside (parentheses), nesting counted", lambda t: _inside(t, "(", ")")),
    "brackets": ("inside [brackets]", lambda t: _inside(t, "[", "]")),
    "braces": ("inside {braces}", lambda t: _inside(t, "{", "}")),
    "line-position": ("characters since the last newline", _line_position),
    "uppercase": ("the character is an upper-case letter", lambda t: np.array([c.isupper() for c in t], float)),
    "whitespace": ("the character is a space, tab or newline", lambda t: np.array([c.isspace() for c in t], float)),
}


def pattern_signal(name: str, text: str) -> np.ndarray:
    if name not in PATTERNS:
        raise UsageError(f"unknown pattern {name!r}: use one of {', '.join(PATTERNS)}")
    return PATTERNS[name][1](text)


@dataclass
class NeuronScore:
    layer: int  # 1-based
    unit: int  # 0-based
    correlation: float


def top_neurons(tr: Trace, text: str, pattern: str, layer: Optional[int] = None, count: int = TOP_NEURONS) -> list:
    """Hidden units ranked by |Pearson correlation| between activation and the pattern signal, best first.
    `layer` is 1-based; None ranks the units of every layer together."""
    signal = pattern_signal(pattern, text)
    if np.std(signal) == 0:
        raise DataError(
            f"the pattern {pattern!r} ({PATTERNS[pattern][0]}) {'always' if signal[0] else 'never'} holds in this "
            f"text, so no unit can be ranked by it: use a text where it varies"
        )
    layers = range(tr.hidden.shape[0]) if layer is None else [check_layer(tr, layer) - 1]
    s = (signal - signal.mean()) / signal.std()
    scores = []
    for index in layers:
        acts = tr.hidden[index]  # N, H
        std = acts.std(axis=0)
        centred = acts - acts.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (centred * s[:, None]).mean(axis=0) / std
        r = np.where(std > 1e-8, r, 0.0)
        scores += [NeuronScore(index + 1, unit, float(r[unit])) for unit in range(acts.shape[1])]
    scores.sort(key=lambda n: (-abs(n.correlation), n.layer, n.unit))
    return scores[:count]


def check_layer(tr: Trace, layer: Optional[int]) -> int:
    """A 1-based layer number (default: the last), checked against the model."""
    num_layers = tr.hidden.shape[0]
    if layer is None:
        return num_layers
    if not 1 <= layer <= num_layers:
        raise UsageError(f"--layer must be between 1 and {num_layers} for this model, not {layer}")
    return layer


# ----------------------------------------------------------------------------------------------------------------
# a view: text and one value per character


@dataclass
class View:
    text: str
    values: np.ndarray  # one per character; NaN means no value (not coloured)
    kind: str  # "surprisal" (bits) or "neuron" (activation in [-1, 1])
    title: str

    def colour(self, value: float) -> Optional[tuple[int, int, int]]:
        if not math.isfinite(value):
            return None
        if self.kind == "surprisal":  # white (predicted) -> yellow -> red (surprising)
            t = min(max(value / MAX_BITS, 0.0), 1.0)
            if t < 0.5:
                return (255, 255, round(255 * (1 - 2 * t)))
            return (255, round(255 * (2 - 2 * t)), 0)
        t = min(max(value, -1.0), 1.0)  # neuron: blue (-1) -> white (0) -> red (+1)
        if t < 0:
            return (round(255 * (1 + t)), round(255 * (1 + 0.6 * t)), 255)
        return (255, round(255 * (1 - 0.7 * t)), round(255 * (1 - 0.7 * t)))

    def digit(self, value: float) -> str:
        """The textual fallback: 0-9 per character (bits, capped at 9; or activation -1..1 as 0..9)."""
        if not math.isfinite(value):
            return " "
        if self.kind == "surprisal":
            return str(min(9, max(0, int(value))))
        return str(round((min(max(value, -1.0), 1.0) + 1.0) / 2.0 * 9))

    def label(self, char: str, value: float) -> str:
        if not math.isfinite(value):
            return f"{char!r}: (context only)"
        unit = "bits" if self.kind == "surprisal" else "activation"
        return f"{char!r}: {value:.2f} {unit}"

    def legend(self) -> str:
        if self.kind == "surprisal":
            return f"surprisal in bits: white = expected, yellow = {MAX_BITS / 2:g}, red = {MAX_BITS:g}+ bits"
        return "activation: blue = -1, white = 0, red = +1"


def surprisal_view(text: str, tr: Trace, title: str) -> View:
    return View(text, tr.nats / LN2, "surprisal", title)


def neuron_view(text: str, tr: Trace, unit: int, layer: Optional[int], title: str) -> View:
    layer = check_layer(tr, layer)
    hidden_size = tr.hidden.shape[2]
    if not 0 <= unit < hidden_size:
        raise UsageError(f"--neuron must be between 0 and {hidden_size - 1} for this model, not {unit}")
    return View(text, tr.hidden[layer - 1, :, unit].astype(float), "neuron", title)


def visible(char: str) -> str:
    """How a character is shown on a terminal: a control character other than newline and tab (a carriage return,
    which would send the cursor back over the line, an escape, which would start a terminal command) as its
    Unicode control picture (U+240D for \\r), anything else as itself."""
    code = ord(char)
    if code < 0x20 and char not in "\n\t":
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return char


def display_lines(view: View) -> list:
    """The view's text as terminal lines, each a list of (shown glyph, value): a line ends at a newline, and at a
    carriage return not followed by one (old Mac line ends), which is shown as its control picture."""
    lines, line = [], []
    text = view.text
    for i, (char, value) in enumerate(zip(text, view.values)):
        if char == "\n":
            lines.append(line)
            line = []
            continue
        line.append((visible(char), float(value)))
        if char == "\r" and text[i + 1 : i + 2] != "\n":
            lines.append(line)
            line = []
    lines.append(line)
    return lines


def render_rich(view: View):
    """A rich Text with each character's background coloured by its value (control characters shown visibly)."""
    from rich.text import Text

    out = Text()
    for number, line in enumerate(display_lines(view)):
        if number:
            out.append("\n")
        for glyph, value in line:
            rgb = view.colour(value)
            out.append(glyph, style=None if rgb is None else f"black on rgb({rgb[0]},{rgb[1]},{rgb[2]})")
    return out


def render_digits(view: View) -> str:
    """Without colour: each line of text, then a line of one digit per character (see View.digit); control
    characters are shown visibly, so digits stay under their characters."""
    out = []
    for line in display_lines(view):
        out.append("".join(glyph for glyph, _ in line))
        out.append("".join(view.digit(value) for _, value in line).rstrip())
    return "\n".join(out) + "\n"


def render_html(view: View) -> str:
    """A self-contained HTML page: the text with a background colour and a tooltip (title) per character."""
    spans = []
    for char, value in zip(view.text, view.values):
        rgb = view.colour(float(value))
        escaped = html.escape(char)
        if rgb is None or char == "\n":
            spans.append(escaped)
        else:
            tip = html.escape(view.label(char, float(value)), quote=True)
            spans.append(f'<span style="background-color:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}" title="{tip}">'
                         f"{escaped}</span>")
    title = html.escape(view.title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n"
        "<style>\nbody { font-family: sans-serif; margin: 2em; }\n"
        "pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 14px; line-height: 1.5;"
        " white-space: pre-wrap; color: #000; }\n"
        "span { border-radius: 2px; }\n</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n<p>{html.escape(view.legend())}. Hover a character for its value.</p>\n"
        f"<pre>{''.join(spans)}</pre>\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# the library function behind `charrnn eval --show / --neuron / --top-neurons`


@dataclass
class Inspection:
    text: str
    what: str
    trace: Trace
    skipped: int
    checkpoint: str

    @property
    def bits_per_char(self) -> float:
        finite = self.trace.nats[np.isfinite(self.trace.nats)]
        return float(finite.mean() / LN2) if len(finite) else float("nan")


def inspect_text(checkpoint: Optional[str] = None, file: Optional[str] = None, skip_unknown: bool = False,
                 max_chars: int = VIEW_MAX_CHARS) -> Inspection:
    """Load a checkpoint, read FILE (default: the run's test split, as `eval`), keep its first max_chars
    characters and trace the model over them."""
    from .evaluation import text_ids
    from ..model.runtime import load_model

    if max_chars < 2:
        raise UsageError(f"--max-chars must be at least 2, not {max_chars}")
    ckpt, model, vocab = load_model(checkpoint)
    ids, what, skipped = text_ids(ckpt, vocab, file, skip_unknown)
    ids = np.asarray(ids[:max_chars])
    if len(ids) < 2:
        raise DataError(f"{what} has {len(ids)} character(s); at least 2 are needed")
    return Inspection(vocab.decode(ids), what, trace(model, ids), skipped, ckpt["path"])


@dataclass
class Explanation:
    inspection: Inspection
    view: Optional[View]  # the coloured view (for --top-neurons: the best unit's)
    ranking: Optional[list]  # NeuronScore list for --top-neurons
    html_path: Optional[str]


def explain(checkpoint: Optional[str] = None, file: Optional[str] = None, show: bool = False,
            neuron: Optional[int] = None, layer: Optional[int] = None, top_pattern: Optional[str] = None,
            top: int = TOP_NEURONS, html_path: Optional[str] = None, skip_unknown: bool = False,
            max_chars: int = VIEW_MAX_CHARS) -> Explanation:
    """What `charrnn eval --show | --neuron K | --top-neurons PATTERN [--html FILE]` computes."""
    if show and neuron is not None:
        raise UsageError("--show and --neuron are two different views: pass one of them")
    if top_pattern is not None and (show or neuron is not None):
        raise UsageError("--top-neurons ranks units on its own: pass it without --show or --neuron")
    if top_pattern is not None:
        pattern_signal(top_pattern, "")  # unknown name -> usage error before the model loads
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if neuron is not None and neuron < 0:
        raise UsageError(f"--neuron must be >= 0, not {neuron}")
    inspection = inspect_text(checkpoint, file, skip_unknown=skip_unknown, max_chars=max_chars)
    text, tr = inspection.text, inspection.trace
    ranking = None
    if top_pattern is not None:
        ranking = top_neurons(tr, text, top_pattern, layer=layer, count=top)
        best = ranking[0]
        view = neuron_view(text, tr, best.unit, best.layer,
                           f"layer {best.layer} unit {best.unit} (r = {best.correlation:+.2f} with "
                           f"{PATTERNS[top_pattern][0]}) on {inspection.what}")
    elif neuron is not None:
        shown_layer = check_layer(tr, layer)
        view = neuron_view(text, tr, neuron, layer, f"layer {shown_layer} unit {neuron} on {inspection.what}")
    else:
        view = surprisal_view(text, tr, f"surprisal on {inspection.what}")
    if html_path is not None:
        write_html(view, html_path)
    return Explanation(inspection, view, ranking, html_path)


def write_html(view: View, path: str) -> str:
    from ..store.fileio import write_text

    return write_text(path, render_html(view), "HTML view")
