"""The generic conversion engine: PyTorch state dict (numpy arrays) -> Flax params pytree.

jaxgen's Flax modules are named after the PyTorch modules they port (``transformer_blocks.0``,
``attn1``, ``to_out.0``), so the default rule maps a Flax param path to a PyTorch key by joining
the path with dots and renaming the leaf (``kernel``/``scale``/``embedding`` -> ``weight``), and
transposes by rank (linear ``(out, in)`` -> ``(in, out)``; conv ``OIHW`` -> ``HWIO``). An
architecture's key map overrides that rule where the layouts really differ (fused projections,
reshapes, renamed modules). Conversion is checked in both directions: every Flax param must be
filled with the right shape, and every PyTorch key must be used (or explicitly ignored). All
problems are listed in one ``ConversionError``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

__all__ = [
    "Source", "ConversionError", "KeyRule", "default_rule", "default_torch_key", "linear", "conv",
    "conv_transpose", "with_transposed_convs", "identity", "convert_state_dict", "check_coverage", "flatten_paths", "unflatten_paths", "renamed",
]

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one Flax param comes from: PyTorch ``keys`` combined by ``fn(*arrays) -> array``."""

    keys: tuple[str, ...]
    fn: Callable[..., np.ndarray]


KeyRule = Callable[[Path, tuple[int, ...]], Source]
"""A key map: (Flax param path, Flax shape) -> the ``Source`` that fills it."""


class ConversionError(ValueError):
    """PyTorch weights do not match the Flax model: lists missing, unused and mis-shaped keys."""


def identity(x: np.ndarray) -> np.ndarray:
    """No change (biases, norm scales, embeddings, named parameters)."""
    return x


def linear(w: np.ndarray) -> np.ndarray:
    """``nn.Linear.weight`` (out, in) -> ``nn.Dense`` kernel (in, out)."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """``nn.Conv{1,2,3}d.weight`` (O, I, *spatial) -> ``nn.Conv`` kernel (*spatial, I, O)."""
    return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


def conv_transpose(w: np.ndarray) -> np.ndarray:
    """``nn.ConvTranspose{1,2,3}d.weight`` (I, O, *spatial) -> kernel (*spatial, I, O).

    Not what ``conv`` does: a transposed convolution stores input channels first, so with I == O
    the two give the same shape and only the values tell them apart.
    """
    return np.transpose(w, tuple(range(2, w.ndim)) + (0, 1))


def with_transposed_convs(names: Iterable[str]) -> "KeyRule":
    """The default rule, except that the kernels of the modules called one of ``names`` (a model's
    ``ConvTranspose`` layers) are ``nn.ConvTranspose2d`` weights: ``conv_transpose`` instead of ``conv``."""
    names = frozenset(names)

    def rule(path: Path, shape: tuple[int, ...]) -> Source:
        if path[-1] == "kernel" and len(path) >= 2 and path[-2] in names:
            return Source((default_torch_key(path),), conv_transpose)
        return default_rule(path, shape)

    return rule


_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def default_torch_key(path: Path) -> str:
    """Flax path -> PyTorch key: dotted join, with the leaf renamed as PyTorch names it."""
    return ".".join(path[:-1] + (_LEAF_TO_TORCH.get(path[-1], path[-1]),))


def default_rule(path: Path, shape: tuple[int, ...]) -> Source:
    """The rule for modules named after their PyTorch twins: a kernel is transposed by its rank."""
    key = default_torch_key(path)
    if path[-1] == "kernel":
        return Source((key,), linear if len(shape) == 2 else conv)
    return Source((key,), identity)


def renamed(prefixes: Sequence[tuple[str, str]], base: KeyRule = default_rule) -> KeyRule:
    """A rule that first rewrites Flax path prefixes, e.g. ``[("caption_projection/linear_1", "y_embedder/x")]``.

    Prefixes are Flax paths with ``/`` between components, matched on whole components; the first
    match wins; the rewritten path then goes through ``base``.
    """
    table = [(tuple(a.split("/")), tuple(b.split("/"))) for a, b in prefixes]

    def rule(path: Path, shape: tuple[int, ...]) -> Source:
        for old, new in table:
            if path[: len(old)] == old:
                return base(new + path[len(old):], shape)
        return base(path, shape)

    return rule


def flatten_paths(tree: Mapping[str, Any]) -> dict[Path, Any]:
    """Nested dict -> ``{path tuple: leaf}``."""
    out: dict[Path, Any] = {}

    def walk(node: Mapping[str, Any], prefix: Path) -> None:
        for k, v in node.items():
            if isinstance(v, Mapping):
                walk(v, prefix + (k,))
            else:
                out[prefix + (k,)] = v

    walk(tree, ())
    return out


def unflatten_paths(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """``{path tuple: leaf}`` -> nested dict."""
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    target: Mapping[str, Any],
    rule: KeyRule = default_rule,
    *,
    ignore: Iterable[str] = (),
    dtype: Any = None,
    materialize: bool = True,
) -> dict[str, Any]:
    """Fill every leaf of ``target`` (a params pytree of arrays or ``jax.ShapeDtypeStruct``) from ``state_dict``.

    Args:
      state_dict: PyTorch key -> numpy array (e.g. from ``jaxgen.hub.load_state_dict``).
      target: the Flax params tree (shapes only are used), e.g. ``jax.eval_shape(init)["params"]``.
      rule: the architecture's key map.
      ignore: regular expressions of PyTorch keys that are known to be unused (buffers such as
        ``position_ids``, tied copies). Anything else left over is an error.
      dtype: floating arrays are cast to it (None keeps the target's dtype).
    Returns:
      nested dict of numpy arrays with ``target``'s structure.
    Raises:
      ConversionError listing every missing key, unused key and shape mismatch.
    """
    ignore_res = [re.compile(p) for p in ignore]
    flat_target = flatten_paths(target)
    consumed: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    out: dict[Path, np.ndarray] = {}
    for path, leaf in flat_target.items():
        shape = _shape_of(leaf)
        source = rule(path, shape)
        absent = [k for k in source.keys if k not in state_dict]
        if absent:
            missing.extend(f"{k} (for {'/'.join(path)} {shape})" for k in absent)
            continue
        consumed.update(source.keys)
        arrays = [np.asarray(state_dict[k]) for k in source.keys]
        try:
            value = source.fn(*arrays)
        except ValueError as e:  # reshapes of the wrong size
            mismatched.append(f"{'/'.join(path)}: expected {shape}, {source.keys} gave an error: {e}")
            continue
        if value.shape != shape:
            shapes = [a.shape for a in arrays]
            mismatched.append(f"{'/'.join(path)}: expected {shape}, got {value.shape} from {list(source.keys)} {shapes}")
            continue
        if materialize:
            want = dtype if dtype is not None else getattr(leaf, "dtype", value.dtype)
            value = np.ascontiguousarray(value.astype(want, copy=False) if _is_float(value.dtype) else value)
        out[path] = value
    unused = sorted(k for k in state_dict if k not in consumed and not any(r.fullmatch(k) for r in ignore_res))
    if missing or unused or mismatched:
        parts = []
        for title, items in (("missing PyTorch keys", missing), ("unused PyTorch keys", unused), ("shape mismatches", mismatched)):
            if items:
                shown = "\n  ".join(items[:50]) + (f"\n  ... and {len(items) - 50} more" if len(items) > 50 else "")
                parts.append(f"{len(items)} {title}:\n  {shown}")
        raise ConversionError("the checkpoint does not match the model:\n" + "\n".join(parts))
    return unflatten_paths(out)


def check_coverage(
    torch_shapes: Mapping[str, tuple[int, ...]],
    target: Mapping[str, Any],
    rule: KeyRule = default_rule,
    *,
    ignore: Iterable[str] = (),
) -> None:
    """Run the key map on shapes alone (e.g. a real-size model on torch's meta device).

    Each PyTorch tensor is stood in for by a zero-stride int8 view, so a multi-billion-parameter
    model is checked without allocating it. Raises ``ConversionError`` exactly as
    ``convert_state_dict`` would.
    """
    zero = np.zeros((), np.int8)
    stand_ins = {k: np.broadcast_to(zero, tuple(s)) for k, s in torch_shapes.items()}
    convert_state_dict(stand_ins, target, rule, ignore=ignore, dtype=None, materialize=False)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def tree_shapes(tree: Any) -> Any:
    """Shapes of a pytree's leaves, for error messages and tests."""
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)
