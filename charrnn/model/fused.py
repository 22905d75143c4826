"""The tanh RNN stack h^l_t = tanh(x^l_t + h^l_{t-1} W^l_hh^T) with a hand-written backward pass (`TanhStack`).

`x^l_t` is W^l_xh x^l_t + b^l for every step (one GEMM over all T*B rows, or a lookup for layer 1), so only the
recurrent part has to be stepped. Autograd on a per-step loop would also compute a small weight-gradient GEMM and
an HxH accumulation at every step; here backward steps only the recurrent gradient

    dz_t = (dL/dh_t + dz_{t+1} W_hh) * (1 - h_t^2),        dL/dh0 = dz_0 W_hh

and then forms dL/dW_hh = sum_t dz_t^T h_{t-1} as ONE GEMM over all T*B rows.
tests/reference.py holds the same maths in plain autograd; tests prove the two agree.

Speed notes (the loops run T times per layer per batch, so every op inside them counts): each step is exactly two
torch calls writing into preallocated slices (`out=`, `addmm_`), with no temporaries for the allocator to find:
forward `addmm` then `sigmoid_` (see `TanhStack`); backward `addmm` (dL/dh_t + dz_{t+1} W_hh, written straight
into dz_t) then an in-place multiply by tanh'(z_t), which is computed for a whole chunk of steps in one op before
the loop. The functions are dtype-agnostic: given bf16 tensors they run bf16 products (fp32 accumulation).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import compiled


# ----------------------------------------------------------------------------------------------------------------
# the whole stack of layers at once, pipelined over two (or more) threads
#
# Layer l at time t needs layer l at t-1 and layer l-1 at t, so layer l+1 can run chunk k-1 while layer l runs
# chunk k (a wavefront). Each worker thread runs single-threaded torch ops: on a 2-core machine two independent
# single-threaded GEMMs beat one GEMM split over two OpenMP threads, because small per-step ops pay a fork/join
# barrier each (and a descheduled OpenMP thread stalls the barrier for a whole time slice when the machine is
# busy). torch releases the GIL inside every op, so the Python threads do run in parallel.


# Below this width the pipeline loses: each per-step op takes a few microseconds, and the two Python threads then
# spend their time handing the GIL back and forth (2x128 fp32 trained 120k chars/s pipelined vs 151-179k serial on
# the 2-core machine; 2x256 fp32 56k vs 62k; at 2x256 bf16 and 2x512 the pipeline was 2-5 % ahead).
PIPELINE_MIN_HIDDEN = 256


def default_workers(num_layers: int, hidden_size: int = PIPELINE_MIN_HIDDEN) -> int:
    """Threads for the layer pipeline on CPU: one per layer, at most torch's intra-op thread count; 1 means serial."""
    if num_layers < 2 or hidden_size < PIPELINE_MIN_HIDDEN:
        return 1
    return max(1, min(num_layers, torch.get_num_threads()))


def choose_workers(device_type: str, num_layers: int, hidden_size: int, requested: Optional[int] = None) -> int:
    """Pipeline threads for a stack whose tensors are on `device_type`: the request (None: `default_workers`) on
    CPU, and always 1 (serial, in the calling thread) elsewhere. On a GPU the threads would gain nothing (the ops
    are queued on one stream) and would lose per-thread state such as autocast and the current device."""
    if device_type != "cpu":
        return 1
    return default_workers(num_layers, hidden_size) if requested is None else requested


def _run_tasks(tasks: list, deps: list, workers: int) -> None:
    """Run tasks[i]() after every tasks[j] for j in deps[i]. `tasks` is listed in a valid serial order, which is
    also each worker's preference. workers == 1 runs them in order in this thread with torch's usual threads."""
    if workers <= 1:
        for task in tasks:
            task()
        return
    import threading

    outer_threads = torch.get_num_threads()
    intra = max(1, outer_threads // workers)
    n = len(tasks)
    done, taken = [False] * n, [False] * n
    failures: list = []
    cond = threading.Condition()

    def next_ready():
        for i in range(n):
            if not taken[i] and all(done[j] for j in deps[i]):
                return i
        return None

    def work() -> None:
        torch.set_num_threads(intra)
        try:
            with torch.no_grad():  # grad mode is per thread; the tensors here are autograd.Function internals
                while True:
                    with cond:
                        while True:
                            if failures or all(taken):
                                return
                            i = next_ready()
                            if i is not None:
                                taken[i] = True
                                break
                            cond.wait()
                    try:
                        tasks[i]()
                    except BaseException as exc:  # hand it to the calling thread, and stop the other workers
                        with cond:
                            failures.append(exc)
                            cond.notify_all()
                        return
                    with cond:
                        done[i] = True
                        cond.notify_all()
        finally:
            # torch.set_num_threads also sets the default that new threads start from: put the caller's back
            torch.set_num_threads(outer_threads)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(workers - 1)]
    for thread in helpers:
        thread.start()
    work()
    for thread in helpers:
        thread.join()
    if failures:
        raise failures[0]


def _chunks(T: int, target: int = 16) -> list[tuple[int, int]]:
    """About `target` time chunks: enough for the pipeline to fill quickly, few enough to hand off cheaply."""
    size = max(1, -(-T // target))
    return [(t0, min(T, t0 + size)) for t0 in range(0, T, size)]


def _backward_steps(g, h, w, later) -> None:
    """The torch loop's backward over one chunk, in place: g (C, B, H) holds dL/dh_t and becomes dL/dz_t;
    h: the chunk's states; later: dL/dz at the step after the chunk (None after the last step)."""
    dtanh = torch.mul(h, h).neg_().add_(1.0)  # tanh'(z_t) = 1 - h_t^2, for the chunk at once
    for step, d in zip(reversed(g.unbind(0)), reversed(dtanh.unbind(0))):
        if later is not None:
            step.addmm_(later, w)  # + dL/dh_t arriving from step t+1
        later = step.mul_(d)


class TanhStack(torch.autograd.Function):
    """All L layers: h^1 = recurrence(x1, h0[0], W^1_hh);  h^l = recurrence(b^l + (h^{l-1} * mask^{l-1}) W^l_xh^T,
    h0[l], W^l_hh). Returns the top layer's states (T, B, H), the layers below it (L-1, T, B, H) and every layer's
    last state (L, B, H) as three outputs, so that a gradient only on the top layer (what training has) costs no
    (L, T, B, H) tensor of zeros: outputs without a gradient reach backward as None."""

    @staticmethod
    def forward(ctx, x1, h0, masks, workers, num_layers, jit, *params):
        L = num_layers
        w_hh, w_xh, b = params[:L], params[L : 2 * L - 1], params[2 * L - 1 :]
        T, B, H = x1.shape
        top, lower = x1.new_empty((T, B, H)), x1.new_empty((L - 1, T, B, H))
        hs = [*lower.unbind(0), top]  # hs[l]: layer l's states (T, B, H)
        # the input each layer above the first sees: h^{l-1} * mask (kept for dL/dW_xh), or h^{l-1} itself
        xin = x1.new_empty((L - 1, T, B, H)) if masks is not None else lower
        chunks = [(0, T)] if jit else _chunks(T)  # compiled: each layer's whole loop in one call
        tasks, deps, index = [], [], {}
        # tanh through the sigmoid, which torch computes several times faster on CPU (0.5 vs 2.6 ns per element
        # here): h = 2 s - 1 with s = sigmoid(2 z). Stepping s instead of h keeps two ops per step:
        #   2 z_t = 2 x_t + 2 h_{t-1} W^T = (2 x_t - 2 c) + 4 s_{t-1} W^T,   c = W 1 (the row sums of W_hh)
        # and h = 2 s - 1 is formed for a whole chunk at once when its steps are done.
        c2 = [w.sum(1).mul_(2) for w in w_hh]  # 2 c per layer
        shift = [None] + [b[l - 1].mul(2).sub_(c2[l]) for l in range(1, L)]  # 2 b - 2 c
        s_init = torch.add(h0, 1).mul_(0.5)  # s_{-1} from h_{-1}

        def forward_task(l, t0, t1):
            def run():
                out = hs[l][t0:t1]  # C, B, H; first 2 z_t's constant part, then s_t, then h_t
                if jit:  # out = x^l_t, then h^l_t in place (charrnn/model/compiled.py)
                    pre = x1.contiguous() if l == 0 else out
                    if l > 0:
                        inp = hs[l - 1] if masks is None else torch.mul(hs[l - 1], masks[l - 1], out=xin[l - 1])
                        torch.addmm(b[l - 1], inp.view(-1, H), w_xh[l - 1].t(), out=out.view(-1, H))
                    compiled.recurrence(pre, out, h0[l].contiguous(), w_hh[l].contiguous())
                    return
                if l == 0:
                    torch.mul(x1[t0:t1], 2, out=out).sub_(c2[0])
                else:
                    inp = hs[l - 1][t0:t1]
                    if masks is not None:
                        inp = torch.mul(inp, masks[l - 1, t0:t1], out=xin[l - 1, t0:t1])
                    torch.addmm(shift[l], inp.reshape(-1, H), w_xh[l - 1].t(), alpha=2, out=out.view(-1, H))
                w_t = w_hh[l].t()
                s = s_init[l] if t0 == 0 else torch.add(hs[l][t0 - 1], 1).mul_(0.5)
                for step in out.unbind(0):  # one call for the chunk's views: indexing per step costs more
                    s = step.addmm_(s, w_t, alpha=4).sigmoid_()  # s_t = sigmoid(2 z_t)
                out.mul_(2).sub_(1)  # h_t = 2 s_t - 1 = tanh(z_t)

            return run

        for d in range(len(chunks) + L - 1):  # diagonal (wavefront) order: a valid serial order, and the
            # order the workers prefer
            for l in range(L):
                k = d - l
                if 0 <= k < len(chunks):
                    index[l, k] = len(tasks)
                    tasks.append(forward_task(l, *chunks[k]))
                    deps.append([index[x] for x in ((l, k - 1), (l - 1, k)) if x in index])
        _run_tasks(tasks, deps, workers)
        last = torch.stack([h[-1] for h in hs])
        ctx.save_for_backward(h0, top, lower, *params)
        # never keep a view of an output on ctx: output -> its grad_fn (this ctx) -> the view -> output is a
        # reference cycle, and each step's activations would wait for the cyclic garbage collector (a leak of
        # several (T, B, H) tensors per step in practice)
        ctx.masks, ctx.workers, ctx.num_layers, ctx.jit = masks, workers, L, jit
        ctx.xin = xin if masks is not None else None
        ctx.set_materialize_grads(False)
        return top, lower, last

    @staticmethod
    def backward(ctx, grad_top, grad_lower, grad_last):
        h0, top, lower, *params = ctx.saved_tensors
        L, masks, jit = ctx.num_layers, ctx.masks, ctx.jit
        xin = ctx.xin if ctx.xin is not None else lower  # layer l+1's input: h^l (times its dropout mask)
        hs = [*lower.unbind(0), top]
        w_hh, w_xh = params[:L], params[L : 2 * L - 1]
        T, B, H = top.shape
        # dL/dh^l_t from outside the stack (None: none), per layer
        outside = [grad_lower[l] if grad_lower is not None else None for l in range(L - 1)] + [grad_top]
        dz = top.new_empty((L, T, B, H))  # dL/dz^l_t
        grads = {}
        chunks = [(0, T)] if jit else _chunks(T)

        def task(item):
            if item[0] == "w":
                return lambda: _weight_grads(grads, item[1], dz, h0, hs, w_hh, xin)
            l, (t0, t1) = item[1], chunks[item[2]]
            return lambda: _chunk_backward(dz, l, t0, t1, outside, grad_last, hs, w_hh, w_xh, masks, jit)

        order, deps = _backward_order(len(chunks), L)
        _run_tasks([task(item) for item in order], deps, ctx.workers)
        grad_h0 = torch.stack([grads["h0", l] for l in range(L)]) if ctx.needs_input_grad[1] else None
        grad_params = [grads["w_hh", l] for l in range(L)]
        grad_params += [grads["w_xh", l] for l in range(1, L)]
        grad_params += [grads["b", l] for l in range(1, L)]
        return (dz[0], grad_h0, None, None, None, None, *grad_params)


def _backward_order(K: int, L: int) -> tuple[list, list]:
    """The backward's tasks in a valid serial order, and each one's prerequisites (indices into that order):
    ("z", l, k) for layer l's time chunk k, which waits for chunk k+1 of its layer and chunk k of the layer above
    (a wavefront from the last chunk of the top layer), and ("w", l) for layer l's weight gradients, as soon as all
    its chunks are done."""
    order, deps, index = [], [], {}
    for d in range(K + L - 1):
        for l in range(L - 1, -1, -1):
            k = K - 1 - (d - (L - 1 - l))
            if 0 <= k < K:
                index[l, k] = len(order)
                order.append(("z", l, k))
                deps.append([index[x] for x in ((l, k + 1), (l + 1, k)) if x in index])
        for l in range(L):  # a layer's weight gradients as soon as its last chunk is done
            if (l, 0) in index and ("w", l) not in index:
                index["w", l] = len(order)
                order.append(("w", l))
                deps.append([index[l, k] for k in range(K)])
    return order, deps


def _chunk_backward(dz, l, t0, t1, outside, grad_last, hs, w_hh, w_xh, masks, jit) -> None:
    """dz[l, t0:t1] = dL/dz^l_t for one time chunk of layer l: the gradient arriving from layer l+1's input and
    from outside the stack, then back through the chunk's steps."""
    T, B, H = dz.shape[1:]
    g = dz[l, t0:t1]  # C, B, H: dL/dh^l_t, then dL/dz^l_t
    rows = g.view(-1, H)
    given = outside[l][t0:t1].reshape(-1, H) if outside[l] is not None else None
    if l < len(hs) - 1:  # through layer l+1's input: d(x^{l+1})/dh^l = W^{l+1}_xh (times the mask)
        up = dz[l + 1, t0:t1].reshape(-1, H)
        if masks is None and given is not None:
            torch.addmm(given, up, w_xh[l], out=rows)
        else:
            torch.mm(up, w_xh[l], out=rows)
            if masks is not None:
                rows.mul_(masks[l, t0:t1].reshape(-1, H))
            if given is not None:
                rows.add_(given)
    elif given is not None:
        rows.copy_(given)
    else:
        rows.zero_()
    if grad_last is not None and t1 == T:
        g[-1].add_(grad_last[l])
    if jit:  # dz_t = (g_t + dz_{t+1} W) * (1 - h_t^2) for all t, in place
        compiled.recurrence(g, g, g.new_zeros((B, H)), w_hh[l].t().contiguous(), hs[l], backward=True)
        return
    # dL/dz at step t1 comes from the chunk after this one, done before it
    _backward_steps(g, hs[l][t0:t1], w_hh[l], dz[l, t1] if t1 < T else None)


def _weight_grads(grads: dict, l: int, dz, h0, hs, w_hh, xin) -> None:
    """Layer l's weight gradients from its finished dz, into `grads`."""
    T, B, H = dz.shape[1:]
    rows = dz[l].view(T * B, H)
    # dL/dW_hh = sum_t dz_t^T h_{t-1}, ONE GEMM over all T*B rows (step 0 pairs with h0)
    gw = torch.mm(dz[l, 0].t(), h0[l])
    if T > 1:
        gw.addmm_(rows[B:].t(), hs[l][:-1].reshape((T - 1) * B, H))
    grads["w_hh", l] = gw
    grads["h0", l] = torch.mm(dz[l, 0], w_hh[l])
    if l > 0:
        grads["w_xh", l] = torch.mm(rows.t(), xin[l - 1].reshape(T * B, H))
        grads["b", l] = rows.sum(0)


def tanh_stack_parts(x1, h0, w_hh, w_xh, b, masks=None, workers=None, jit=None):
    """L stacked tanh layers, fast forward and backward: (top layer's states (T, B, H), the layers below
    (L-1, T, B, H), every layer's last state (L, B, H)).

    x1: (T, B, H) layer 1's pre-activation input (W^1_xh x^1_t + b^1, a lookup); h0: (L, B, H); w_hh: L (H, H);
    w_xh, b: the L-1 input weights (H, H) and biases (H,) of layers 2..L; masks: (L-1, T, B, H) dropout masks
    (already scaled by 1/(1-p)) applied to each layer's output before the next layer, or None.
    workers: pipeline threads on CPU (None: `default_workers`; 1: serial, on torch's own intra-op threads); tensors
    on any other device always run serially (`choose_workers`).
    jit: each layer's T-step loop compiled with numba (charrnn/model/compiled.py), serial over layers with numba's threads
    over the batch; None: where it can run (fp32 or fp64 CPU tensors, numba installed), False: the torch loop."""
    L = len(w_hh)
    if jit is None:
        jit = compiled.usable(x1)
    elif jit and not compiled.usable(x1):
        raise RuntimeError(f"jit=True: the compiled recurrence runs float32 or float64 CPU tensors where numba is "
                           f"installed, not {x1.dtype} on {x1.device}")
    workers = 1 if jit else choose_workers(x1.device.type, L, h0.shape[-1], workers)
    return TanhStack.apply(x1, h0, masks, workers, L, bool(jit), *w_hh, *w_xh, *b)
