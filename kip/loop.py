"""The resumable optimisation loop every distillation run shares (KIP, DC, DSA, DM): steps in
jitted chunks that end on multiples of `eval_every`, a test evaluation and a checkpoint after
each, a NaN check, a progress bar, and a checkpoint on Ctrl-C. A resumed run repeats the same
compiled programs on the same state, so it ends where an uninterrupted run would."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from kip import InputError, TrainingDiverged, io

# Options that may change when a run is resumed (the rest must match the checkpoint). Where the
# chunks end does not change the result (tests/test_matching.py resumes across other periods).
RESUMABLE_CHANGES = ("steps", "data_dir", "devices", "checkpoint_every", "max_seconds")

# How a budget's seconds are counted: "wall" the elapsed time; "cpu" this process's CPU time (all
# its threads), which other jobs on the machine barely change: an equal-compute budget that holds
# while the machine is shared (on one pinned core, both read the same when nothing else runs).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def stopwatch() -> Callable[[], dict[str, float]]:
    """Started now; calling it gives the seconds since by every clock: {'wall': s, 'cpu': s}."""
    start = {k: clock() for k, clock in CLOCKS.items()}
    return lambda: {k: clock() - start[k] for k, clock in CLOCKS.items()}


@dataclasses.dataclass
class History:
    """A run's record: per-step rows [step, loss] (+ [accuracy] where the method reports one),
    evaluations {'step', 'seconds' (spent stepping until then), 'test_accuracy', ...}, and seconds
    spent stepping (compilation included, evaluations and checkpoints not)."""

    losses: list = dataclasses.field(default_factory=list)
    evals: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def save_checkpoint(path: str, state: Any, config: dict, history: History) -> None:
    """The state's leaves and {'config', 'losses', 'evals', 'seconds'} as one .npz (atomic)."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    meta = {"config": config, "losses": history.losses, "evals": history.evals, "seconds": history.seconds}
    io.write_npz(path, meta=np.array(json.dumps(meta)), **arrays)


def load_checkpoint(path: str, template: Any | None) -> tuple[Any | None, dict]:
    """The saved state (shaped like `template`) and the run's metadata; template None
    reads the metadata only."""
    arrays = io.read_npz(path)
    if template is None:
        try:
            return None, json.loads(str(arrays["meta"]))
        except (KeyError, ValueError):
            raise InputError(f"{path}: not a kip checkpoint") from None
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        restored = [jnp.asarray(arrays[f"leaf_{i:04d}"], dtype=leaf.dtype) for i, leaf in enumerate(leaves)]
        meta = json.loads(str(arrays["meta"]))
    except KeyError:
        raise InputError(f"{path}: not a kip checkpoint of this run's shape") from None
    for new, old in zip(restored, leaves):
        if new.shape != old.shape:
            raise InputError(f"{path}: checkpoint arrays do not match this run's shapes")
    return jax.tree_util.tree_unflatten(treedef, restored), meta


def resume(path: str, template: Any, config: dict, out: str) -> tuple[Any, History]:
    """The checkpointed state and history of the run in `out`, after checking that it was run
    with `config` (up to `RESUMABLE_CHANGES`)."""
    state, meta = load_checkpoint(path, template)
    changed = [k for k, v in meta["config"].items() if k not in RESUMABLE_CHANGES and config.get(k) != v]
    if changed:
        before = ", ".join(f"{k}={meta['config'].get(k)!r}" for k in changed)
        raise InputError(f"--resume: {out} was run with different options ({before})")
    return state, History(meta["losses"], meta["evals"], meta["seconds"])


# Steps one compiled call of `fused_steps` can take (longer chunks are split into calls of at most this);
# its per-step metrics are kept in buffers of this length.
FUSED_CAPACITY = 1024


def fused_steps(step: Callable[..., tuple[Any, dict]], capacity: int = FUSED_CAPACITY
                ) -> Callable[..., tuple[Any, dict]]:
    """`run(state, *args, num_steps) -> (state, metrics)`: `num_steps` steps of `step(state, *args)
    -> (state, metrics)` fused in compiled calls, the metrics stacked ((num_steps, ...) numpy arrays).

    The step count is an argument of the compiled program (a `fori_loop`), not its shape, so
    chunks of any length (a resumed run's first, a run's last, another `eval_every`) reuse one
    program; compiling a method's step is most of a short run's time."""

    @jax.jit
    def run_at_most(state, args, num_steps):
        shapes = jax.eval_shape(step, state, *args)[1]
        buffers = jax.tree_util.tree_map(lambda m: jnp.zeros((capacity, *m.shape), m.dtype), shapes)

        def body(i, carry):
            state, buffers = carry
            state, metrics = step(state, *args)
            return state, jax.tree_util.tree_map(lambda b, m: b.at[i].set(m), buffers, metrics)

        return jax.lax.fori_loop(0, num_steps, body, (state, buffers))

    def run(state, *args, num_steps: int):
        if num_steps < 1:
            raise ValueError(f"fused_steps: num_steps must be at least 1, got {num_steps}")
        pieces = []
        for start in range(0, num_steps, capacity):
            n = min(capacity, num_steps - start)
            state, buffers = run_at_most(state, args, n)
            pieces.append(jax.tree_util.tree_map(lambda b: np.asarray(b)[:n], buffers))
        return state, jax.tree_util.tree_map(lambda *p: np.concatenate(p), *pieces)

    return run


def optimise(
    state: Any,
    make_chunk: Callable[[int], Callable[[Any], tuple[Any, dict]]],
    steps: int,
    eval_every: int,
    evaluate: Callable[[Any], dict],
    checkpoint: Callable[[Any, History], None],
    history: History,
    checkpoint_path: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
    hint: str = "try a smaller --lr",
    checkpoint_every: int | None = None,
    max_seconds: float | None = None,
    clock: str = "wall",
) -> tuple[Any, History]:
    """Steps `state` (with `.params` and `.step`) to `steps`. `make_chunk(n)` is a jitted
    `state -> (state, metrics)` taking n steps, metrics {'loss': (n,), optionally 'accuracy': (n,)};
    `evaluate(state)` the test metrics (every `eval_every` steps and at the end); `checkpoint(state,
    history)` saves both, every `checkpoint_every` steps (None: at each evaluation) and at each
    evaluation. With `max_seconds`, stops (evaluated) at the first chunk end where the steps have
    taken that long by `clock` (`CLOCKS`): an equal-compute budget, whose last step depends on the
    machine. Raises
    `TrainingDiverged` on a NaN loss or parameter, keeping the last good checkpoint."""
    now = CLOCKS[clock]
    periods = (eval_every,) if checkpoint_every is None else (eval_every, checkpoint_every)
    runners: dict[int, Callable] = {}
    step = int(state.step)
    out_of_time = lambda: max_seconds is not None and history.seconds >= max_seconds
    if not history.evals:
        history.evals.append({"step": step, "seconds": history.seconds, **evaluate(state)})
        checkpoint(state, history)  # the start: a good state to fall back to from step 1 on
    bar = tqdm(total=steps, initial=min(step, steps), disable=not progress, unit="step", file=sys.stderr)
    bar.set_postfix(test_acc=f"{history.evals[-1]['test_accuracy']:.4f}")
    try:
        while step < steps and not out_of_time():
            # chunks end on multiples of the periods, so a resumed run repeats the same programs
            chunk = min(min((step // p + 1) * p for p in periods), steps) - step
            if chunk not in runners:
                runners[chunk] = make_chunk(chunk)
            start = now()
            new_state, metrics = runners[chunk](state)
            chunk_loss = np.asarray(metrics["loss"])
            bad = np.flatnonzero(~np.isfinite(chunk_loss))
            if len(bad) or not all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(new_state.params)):
                failed = step + 1 + (int(bad[0]) if len(bad) else chunk - 1)
                raise TrainingDiverged(f"loss became NaN/inf at step {failed}; the last good checkpoint (step {step}) "
                                       f"is in {checkpoint_path} - {hint}")
            history.seconds += now() - start
            extra = [np.asarray(metrics["accuracy"])] if "accuracy" in metrics else []
            history.losses.extend([step + 1 + i, float(chunk_loss[i]), *(float(e[i]) for e in extra)] for i in range(chunk))
            state, step = new_state, step + chunk
            if step % eval_every == 0 or step == steps or out_of_time():
                history.evals.append({"step": step, "seconds": history.seconds, **evaluate(state)})
            checkpoint(state, history)
            bar.update(chunk)
            bar.set_postfix(loss=f"{chunk_loss[-1]:.3g}", test_acc=f"{history.evals[-1]['test_accuracy']:.4f}")
    except KeyboardInterrupt:
        bar.close()
        checkpoint(state, history)
        log(f"interrupted: checkpoint at step {step} in {checkpoint_path}; continue with the same command and --resume")
        raise
    bar.close()
    if history.evals[-1]["step"] != step:
        history.evals.append({"step": step, "seconds": history.seconds, **evaluate(state)})
    return state, history
