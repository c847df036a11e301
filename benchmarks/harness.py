"""The benchmarks' shared harness: what ``kandinsky.py``, ``wuerstchen.py`` and ``unidiffuser.py`` have in common.

Paths and ``sys.path`` (the repository and this folder), the devices' datasheet peaks (``PEAKS``), progress lines
(``log``), host inputs (``random_array``, ``nchw``, ``read_config``), XLA's FLOP counts (``xla_flops``), the timing of
jaxgen's shipping loop and compiled programs (``shipping_denoise``, ``time_compiled``, ``time_pipeline``), the
base classes of each family's two sides (``Side``, ``JaxSide``, ``TorchSide``: models built on first use and freed,
the step timing), the recorder and its JSON (``Recorder``), the run (``start_run``, ``measure``, ``run_side``,
``matmul_rates``), the tables (``report``, ``print_table``, ``print_flops_table``, ``flop_counts``) and the
command-line options every benchmark shares (``list_arguments``, ``run_arguments``, ``parse_lists``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
CONFIGS = REPO / "tests" / "configs"

# dense datasheet peaks, FLOP/s, by a substring of JAX's device_kind (first match): bfloat16 on tensor cores / MXUs;
# float32 on GPUs as TF32 tensor cores (what JAX's default matmul precision uses there; PyTorch's matmuls do not)
PEAKS = (("H200", {"bfloat16": 989e12, "float32": 495e12}), ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
         ("H100", {"bfloat16": 989e12, "float32": 495e12}), ("A100", {"bfloat16": 312e12, "float32": 156e12}),
         ("TPU v4", {"bfloat16": 275e12}), ("TPU v5 lite", {"bfloat16": 197e12}), ("TPU v5", {"bfloat16": 459e12}),
         ("TPU v6 lite", {"bfloat16": 918e12}))
_START = time.perf_counter()
_COMPILES: list[float] = []  # backend compile durations, from jax.monitoring


def log(message: str) -> None:
    """``message`` on stderr after the time and the seconds since the start."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def read_config(path: Path) -> dict:
    """A config file's JSON, without its ``_``-prefixed keys."""
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def random_array(shape: tuple, seed: int) -> np.ndarray:
    """Standard normal host float32 values of ``shape`` from ``seed``."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def nchw(x: np.ndarray) -> np.ndarray:
    """A 4-d NHWC array as NCHW (contiguous); any other array as it is."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def xla_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled or lowered program (``cost_analysis``); None where the backend has none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _record_compile(event: str, duration: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(duration)


def fmt(value: Any, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``; "-" for None."""
    return "-" if value is None else format(value, spec)


# ----------------------------------------------------------------------------- timing


def shipping_denoise(pipe: Any, denoiser: Any, params: Any, latents: Any, state: Any, cond: Any,
                     steps: int, scale: float) -> tuple[tuple, dict]:
    """``sampling.denoise``'s arguments as ``DiffusionPipeline.denoise`` passes them with guidance on
    (``uncond + scale (text - uncond)``), the progress bar disabled and no callback: ``(args, static keywords)``."""
    import jax
    import jax.numpy as jnp

    from jaxgen import sharding
    from jaxgen.pipelines import sampling
    from jaxgen.pipelines.pipeline_utils import as_key

    scheduler, key = pipe.scheduler, jax.random.split(as_key(0))[1]
    args = (denoiser, scheduler, params, latents, state, cond, jnp.float32(scale), key, jnp.int32(steps))
    eta = 0.0 if sampling.accepts(scheduler.step, "eta") else None
    return args, dict(guidance=sampling.ClassifierFreeGuidance(), post_step=None, eta=eta, show_progress=False,
                      callback=None, callback_steps=1, batch_sharding=sharding.batch_sharding(pipe.mesh))


def time_compiled(fn: Any, static: tuple, args: tuple, reps: int, check: Callable[[Any], dict] | None = None) -> dict:
    """A jitted ``fn`` compiled ahead (``fn.lower(*static, *args).compile()``; ``static``: its static leading
    arguments, e.g. the module), one warm-up call, then ``reps`` calls timed: seconds per call, the compile
    time, XLA's FLOP counts of the compiled and lowered programs, the output's shape (each output's, for a tuple),
    and what ``check(output)`` returns, if given (after the clock stops)."""
    import jax

    start = time.perf_counter()
    lowered = fn.lower(*static, *args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    for _ in range(reps):
        out = compiled(*args)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / reps
    shape = list(out.shape) if hasattr(out, "shape") else [list(x.shape) for x in out]
    return {"seconds": seconds, "compile_s": compile_s, "flops": xla_flops(compiled), "flops_lowered": xla_flops(lowered),
            "output_shape": shape, **(check(out) if check else {})}


def decode_reps(steps: int) -> int:
    """Decodes timed: ``steps``, at most 3 on a CPU (seconds each there at 512 px)."""
    import jax

    return max(1, min(3, steps) if jax.default_backend() == "cpu" else steps)


def time_pipeline(call: Callable[[], np.ndarray], sync: Callable[[], None]) -> dict:
    """The first call (compiles; XLA compiles counted) and the second (timed) of a whole-pipeline call."""
    compiles = len(_COMPILES)
    start = time.perf_counter()
    images = call()
    sync()
    first = time.perf_counter() - start
    new = _COMPILES[compiles:]
    start = time.perf_counter()
    images = call()
    sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "first_call_s": first, "first_call_programs_compiled": len(new),
            "first_call_compile_s": sum(new), "first_call_longest_compiles_s": sorted(new)[::-1][:4],
            "output_shape": list(np.shape(images)),
            "output_finite": bool(np.isfinite(np.asarray(images, np.float32)).all())}


# ----------------------------------------------------------------------------- the two sides


class Side:
    """What both halves of a family share: the models, built on first use and freed once no later part needs
    them."""

    name: str
    models: dict

    def release(self, keep: set[str]) -> None:
        for name in [name for name in self.models if name not in keep]:
            del self.models[name]
        gc.collect()

    def close(self) -> None:
        self.release(set())


class JaxSide(Side):
    """jaxgen's half of one dtype: each model built once, on first use (``model_class``, a family's subclass
    names the classes), then the measurements."""

    name = "jaxgen"

    def __init__(self, setup: Any, dtype_name: str, steps: int) -> None:
        import jax.numpy as jnp

        self.setup, self.dtype_name, self.dtype, self.steps = setup, dtype_name, jnp.dtype(dtype_name), steps
        self.models: dict[str, tuple] = {}

    def model_class(self, name: str) -> Any:
        """jaxgen's class of the component ``name`` (each family's subclass defines this)."""
        raise NotImplementedError

    def model(self, name: str) -> tuple:
        """(module, params) of a component, random, in this side's dtype."""
        import jax

        from random_weights import jax_random_params

        if name not in self.models:
            start = time.perf_counter()
            module = self.model_class(name).from_config(self.setup.configs[name], dtype=self.dtype)
            params = jax.block_until_ready(jax_random_params(module, self.dtype))
            size = sum(x.size for x in jax.tree_util.tree_leaves(params))
            log(f"jaxgen {self.dtype_name}: built {name} ({size / 1e6:.0f}M params) in {time.perf_counter() - start:.1f} s")
            self.models[name] = (module, params)
        return self.models[name]

    def _time_loop(self, pipe: Any, args: tuple, options: dict) -> dict:
        """Compile ``sampling.denoise`` ahead, warm up with one step, time ``self.steps`` steps."""
        import jax
        import jax.numpy as jnp

        from jaxgen.pipelines import sampling

        with pipe._mesh_context():
            start = time.perf_counter()
            lowered = sampling.denoise.lower(*args, **options)
            compiled = lowered.compile()
            compile_s = time.perf_counter() - start
            dynamic = args[2:8]
            jax.block_until_ready(compiled(*dynamic, jnp.int32(1)))  # latents: an array or a pytree of them
            start = time.perf_counter()
            jax.block_until_ready(compiled(*dynamic, jnp.int32(self.steps)))
            seconds = (time.perf_counter() - start) / self.steps
        return {"seconds": seconds, "compile_s": compile_s, "flops": xla_flops(compiled), "flops_lowered": xla_flops(lowered)}


class TorchSide(Side):
    """diffusers' half of one dtype, on "cuda" when there is one: each model built once (``builder``, a family's
    subclass gives the constructors), then the measurements."""

    name = "diffusers"

    def __init__(self, setup: Any, dtype_name: str, steps: int) -> None:
        import diffusers
        import torch
        import transformers

        diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []" after .to(dtype)
        transformers.utils.logging.set_verbosity_error()
        self.setup, self.dtype_name, self.steps = setup, dtype_name, steps
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.models: dict[str, Any] = {}

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def builder(self, name: str) -> Callable[[], Any]:
        """A constructor of diffusers' (or transformers') model ``name`` (each family's subclass defines this)."""
        raise NotImplementedError

    def model(self, name: str) -> Any:
        from random_weights import torch_random_module

        if name not in self.models:
            start = time.perf_counter()
            self.models[name] = torch_random_module(self.builder(name), self.dtype, self.device)
            size = sum(p.numel() for p in self.models[name].parameters())
            log(f"diffusers {self.dtype_name}: built {name} ({size / 1e6:.0f}M params) in {time.perf_counter() - start:.1f} s")
        return self.models[name]

    def _to_tensor(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(x).to(self.device, self.dtype)

    def _time_steps(self, loop: Callable[[int], Any]) -> dict:
        """``loop(limit)`` runs the first ``limit`` steps of a ``self.steps``-step schedule: one to warm up, then all."""
        loop(1)
        self.sync()
        start = time.perf_counter()
        loop(self.steps)
        self.sync()
        return {"seconds": (time.perf_counter() - start) / self.steps}

    def release(self, keep: set[str]) -> None:
        import torch

        super().release(keep)
        if self.device == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the run


class Recorder:
    """Collects the measurements, rewrites the JSON after each, and keeps the time budget."""

    def __init__(self, path: Path | None, meta: dict, budget: float | None, units: dict[str, str]) -> None:
        """``units``: each part's unit (e.g. "s/step"), for its rows."""
        self.path, self.meta, self.budget, self.units = path, meta, budget, units
        self.rates: dict[str, dict] = {}
        self.measurements: list[dict] = []

    def over_budget(self) -> bool:
        return self.budget is not None and time.perf_counter() - _START > self.budget

    def add(self, part: str, dtype: str, side: str, result: dict) -> None:
        self.measurements.append({"part": part, "dtype": dtype, "side": side, **result})
        self.flush()

    def rows(self) -> list[dict]:
        """One row per (part, dtype): both sides, the FLOPs (jaxgen's compiled program), the floor."""
        rows: dict[tuple, dict] = {}
        for m in self.measurements:
            row = rows.setdefault((m["part"], m["dtype"]), {"part": m["part"], "dtype": m["dtype"], "unit": self.units[m["part"]]})
            row[m["side"]] = {k: v for k, v in m.items() if k not in ("part", "dtype", "side")}
        for row in rows.values():
            ours, rate = row.get("jaxgen") or {}, self.rates.get(row["dtype"], {}).get("best")
            flops = ours.get("flops")
            if flops and rate:
                row.update(flops=flops, matmul_flops_per_s=rate, floor_s=flops / rate)
                for side in ("jaxgen", "diffusers"):
                    seconds = (row.get(side) or {}).get("seconds")
                    if seconds:
                        row[side]["fraction_of_matmul_rate"] = flops / seconds / rate
        return list(rows.values())

    def flush(self) -> None:
        if self.path is not None:
            data = {**self.meta, "elapsed_s": time.perf_counter() - _START, "matmul_rates": self.rates,
                    "rows": self.rows(), "measurements": self.measurements}
            self.path.write_text(json.dumps(data, indent=2) + "\n")


def matmul_rates(dtype: str, earlier: dict | None = None) -> dict:
    """FLOP/s of a large matmul in JAX and in PyTorch (8192 on a GPU, 2048 on a CPU); "best": the highest
    of these and of ``earlier`` (the same dtype measured before: on a shared machine the load varies)."""
    import jax

    from pixart import matmul_rate, torch_matmul_rate

    cpu = jax.default_backend() == "cpu"
    size = 2048 if cpu else 8192
    # PyTorch's bfloat16 matmul on a CPU without bfloat16 instructions takes a minute at 2048: probe first
    probe = torch_matmul_rate(dtype, 256) if cpu else None
    torch_rate = probe if probe and 2 * size**3 / probe > 10.0 else torch_matmul_rate(dtype, size)
    out = {"size": size, "jax": matmul_rate(dtype, size), "torch": torch_rate}
    log(f"matmul {dtype} {size}: jax {out['jax'] / 1e9:.1f}, torch {out['torch'] / 1e9:.1f} GFLOP/s")
    out["best"] = max(out["jax"], out["torch"], (earlier or {}).get("best", 0.0))
    out["measurements"] = (earlier or {}).get("measurements", []) + [{"jax": out["jax"], "torch": out["torch"]}]
    return out


def run_side(side: Any, parts: list[str], recorder: Recorder, measure: Callable[[str], dict] | None = None,
             keep: Callable[[int], set[str]] = lambda i: set()) -> None:
    """Every part on one side (``measure(part)``, by default ``side.measure(part)``), in order; after part ``i``
    the side frees every model but ``keep(i)``. An error or the spent budget is recorded instead of a result."""
    measure = measure or side.measure
    try:
        for i, part in enumerate(parts):
            if recorder.over_budget():
                log(f"{side.name} {side.dtype_name} {part}: skipped (time budget spent)")
                recorder.add(part, side.dtype_name, side.name, {"skipped": "time budget spent"})
                continue
            log(f"{side.name} {side.dtype_name} {part}: start")
            try:
                result = measure(part)
            except Exception as e:  # noqa: BLE001 - one part failing (e.g. out of memory) must not lose the rest
                log(f"{side.name} {side.dtype_name} {part}: FAILED\n{traceback.format_exc()}")
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
            if "seconds" in result:
                log(f"{side.name} {side.dtype_name} {part}: {result['seconds']:.4f} {recorder.units[part]}"
                    f"{_compile_note(result)}")
            recorder.add(part, side.dtype_name, side.name, result)
            side.release(keep(i))
    finally:
        side.close()


def _compile_note(result: dict) -> str:
    """The compile time of a measured part, and its pipeline's first call where it has one, for the log."""
    note = f", compile {result['compile_s']:.1f} s" if "compile_s" in result else ""
    if "first_call_s" in result:
        note = (f", first call {result['first_call_s']:.1f} s ({result['first_call_programs_compiled']} "
                f"XLA programs compiled, {result['first_call_compile_s']:.1f} s)")
    return note


def print_flops_table(setup: Any, rows: list[dict], counts: dict) -> None:
    """Per (part, dtype): the shapes, XLA's and PyTorch's counts, the device's peak and each side's FLOP/s."""
    print("| part | dtype | rows | GFLOP (XLA, jaxgen) | GFLOP (FlopCounterMode, diffusers) | device peak TFLOP/s "
          "| floor at peak | jaxgen GFLOP/s | diffusers GFLOP/s | of peak (jaxgen / diffusers) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flops, peak = r.get("flops"), device_peak(r["dtype"])
        torch_flops = counts.get(r["dtype"], {}).get(r["part"])
        rate = lambda side: flops / (r.get(side) or {})["seconds"] if flops and "seconds" in (r.get(side) or {}) else None
        of_peak = lambda side: fmt(rate(side) and peak and rate(side) / peak, ".1%")
        print(f"| {r['part']} | {r['dtype']} | {setup.describe(r['part'])} | {fmt(flops and flops / 1e9, '.1f')} "
              f"| {fmt(torch_flops and torch_flops / 1e9, '.1f')} | {fmt(peak and peak / 1e12, '.0f')} "
              f"| {fmt(flops and peak and flops / peak, '.4g')} | {fmt(rate('jaxgen') and rate('jaxgen') / 1e9, '.1f')} "
              f"| {fmt(rate('diffusers') and rate('diffusers') / 1e9, '.1f')} | {of_peak('jaxgen')} / {of_peak('diffusers')} |")


def _flops_check(rows: list[dict]) -> None:
    """Warn where the compiled program's FLOP count is far from the lowered (unoptimised) one's: custom
    calls (cuDNN attention, cuBLAS) may go uncounted on a GPU."""
    for row in rows:
        ours = row.get("jaxgen") or {}
        a, b = ours.get("flops"), ours.get("flops_lowered")
        if a and b and abs(a - b) > 0.1 * max(a, b):
            log(f"note: {row['part']} {row['dtype']}: compiled program {a / 1e9:.1f} GFLOP, lowered {b / 1e9:.1f} GFLOP")


def start_run(args: argparse.Namespace) -> None:
    """What every benchmark sets before it measures: JAX's GPU memory not preallocated (the GPU is shared with
    PyTorch) and no persistent compilation cache (compile times from scratch, every run), unless set already; the
    backends started with those; XLA's compile durations recorded (``_COMPILES``); ``--torch-threads``."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with PyTorch
    os.environ.setdefault("JAXGEN_COMPILATION_CACHE", "off")  # compile times from scratch, every run
    import jax

    jax.devices()  # backends start with the flags above, before tests.conftest is imported
    jax.monitoring.register_event_duration_secs_listener(_record_compile)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)


def device_peak(dtype: str) -> float | None:
    """The datasheet peak (``PEAKS``) of JAX's first device in ``dtype``, FLOP/s; None where unknown."""
    import jax

    kind = jax.devices()[0].device_kind
    return next((peaks.get(dtype) for name, peaks in PEAKS if name in kind), None)


def environment_meta(dtypes: list[str] | None = None) -> dict:
    """The JSON's record of where a run ran: both libraries' devices, the host, the devices' datasheet peaks in
    ``dtypes`` (only where given), the versions, XLA's flags, PyTorch's TF32 settings, JAX's default matmul
    precision and the 1-minute load average at the start."""
    import diffusers
    import jax
    import torch

    torch_device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "jax_device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "torch_device": torch_device, "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **({} if dtypes is None else {"device_peaks": {d: device_peak(d) for d in dtypes}}),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "load_average_start": os.getloadavg()[0],
    }


def measure(recorder: Recorder, setup: Any, args: argparse.Namespace, sides: tuple[type, type],
            run: Callable[[Any], None], torch_dtypes: list[str],
            flop_counter: Callable[[Any, str, str], float | None] | None = None) -> list[dict]:
    """Every dtype of ``args.dtypes`` in turn: PyTorch's FLOP counts of each part of ``args.only`` (where
    ``flop_counter(setup, part, dtype)`` is given; in the JSON as ``torch_flop_counter``, by dtype and part), the
    matmul rates, then ``run(side)`` for jaxgen's side and diffusers' (``sides``, each built as ``side_class(setup,
    dtype, args.steps)``; diffusers' only for ``torch_dtypes``), the rates again (the best of both). Returns the rows,
    FLOPs checked, the load average at the end recorded."""
    counts: dict[str, dict] = {}
    if flop_counter is not None:
        recorder.meta["torch_flop_counter"] = counts  # FlopCounterMode on meta tensors, by dtype and part
    for dtype in args.dtypes:
        if flop_counter is not None:
            counts[dtype] = {part: flop_counter(setup, part, dtype) for part in args.only}
        recorder.rates[dtype] = matmul_rates(dtype)
        for side_class in sides[:1] + (sides[1:] if dtype in torch_dtypes else ()):
            run(side_class(setup, dtype, args.steps))
        recorder.rates[dtype] = matmul_rates(dtype, recorder.rates[dtype])  # again: the best of both
        recorder.flush()
    rows = recorder.rows()
    _flops_check(rows)
    recorder.meta["load_average_end"] = os.getloadavg()[0]
    return rows


def report(recorder: Recorder, rows: list[dict], head: str, torch_dtypes: list[str] | None = None, notes: str = "",
           flops_table: Callable[[], None] | None = None) -> None:
    """The summary line (``head``, then the environment: the devices, the dtypes diffusers ran where given, the
    host, the versions, ``notes``, the load averages, the whole run's time), the table, ``flops_table()`` where
    given, and the JSON once more."""
    meta, versions = recorder.meta, recorder.meta["versions"]
    ran = "" if torch_dtypes is None else f" (diffusers dtypes: {', '.join(torch_dtypes) or 'none'})"
    print(f"\n{head}; jax {meta['jax_device']}, torch {meta['torch_device']}{ran}; host {meta['host']}; jax "
          f"{versions['jax']}, torch {versions['torch']}, diffusers {versions['diffusers']}; {notes}1-min load average "
          f"{meta['load_average_start']:.1f} at the start, {meta['load_average_end']:.1f} at the end; whole run "
          f"{time.perf_counter() - _START:.0f} s\n")
    print_table(rows)
    if flops_table is not None:
        print()
        flops_table()
    recorder.flush()


def flop_counts(args: argparse.Namespace, setup: Any, xla_counter: Callable[[Any, str, str], dict],
                torch_counter: Callable[[Any, str, str], float | None]) -> list[dict]:
    """``--flops-only``'s counts of every part of ``args.only`` in every dtype, nothing run: XLA's
    (``xla_counter(setup, part, dtype)``: flops, flops_lowered, compile_s, on abstract shapes), PyTorch's
    (``torch_counter``, on meta tensors), and the floor at the device's datasheet peak where known."""
    out = []
    for dtype in args.dtypes:
        for part in args.only:
            xla = xla_counter(setup, part, dtype)
            counted, peak = torch_counter(setup, part, dtype), device_peak(dtype)
            out.append({"part": part, "dtype": dtype, "rows": setup.describe(part), **xla, "torch_flops": counted,
                        "device_peak": peak, "floor_at_peak_s": xla["flops"] / peak if xla["flops"] and peak else None})
            log(f"{part} {dtype}: XLA {fmt(xla['flops'] and xla['flops'] / 1e9, '.1f')} GFLOP (compile "
                f"{xla['compile_s']:.1f} s), FlopCounterMode {fmt(counted and counted / 1e9, '.1f')} GFLOP")
    return out


def print_flop_counts(counts: list[dict], rows: str = "rows", compiled: str = "GFLOP (XLA compiled)") -> None:
    """The table of ``flop_counts``; ``rows`` and ``compiled``: the headers of the work and XLA's count."""
    print(f"| part | dtype | {rows} | {compiled} | GFLOP (XLA lowered) | GFLOP (FlopCounterMode, diffusers) "
          "| device peak TFLOP/s | floor at peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in counts:
        g = lambda v: fmt(v and v / 1e9, ".1f")
        print(f"| {r['part']} | {r['dtype']} | {r['rows']} | {g(r['flops'])} | {g(r['flops_lowered'])} | {g(r['torch_flops'])} "
              f"| {fmt(r['device_peak'] and r['device_peak'] / 1e12, '.0f')} | {fmt(r['floor_at_peak_s'], '.4g')} |")


def list_arguments(doc: str, parts: tuple[str, ...], default: tuple[str, ...] | None = None, default_note: str = "all",
                   torch_dtypes: bool = True) -> argparse.ArgumentParser:
    """A parser (described by ``doc``'s first paragraph) with the options every benchmark takes first: --only
    (``parts``; ``default``, all of them unless given, ``default_note`` in its help), --dtypes and, where
    ``torch_dtypes``, --torch-dtypes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(default or parts), help=f"comma-separated parts, of "
                        f"{','.join(parts)} (default: {default_note})")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, run in this order")
    if torch_dtypes:
        parser.add_argument("--torch-dtypes", default=None, help="the dtypes diffusers runs too (default: all of "
                            "--dtypes; the others run jaxgen only)")
    return parser


def run_arguments(parser: argparse.ArgumentParser, threads_note: str = "", flops_only: str | None = None) -> None:
    """The options every benchmark takes last: --tiny, --flops-only where ``flops_only`` is given (what follows
    "count the FLOPs" in its help), --skip-torch, --torch-threads (``threads_note`` ends its help), --time-budget,
    --json."""
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same architectures: a smoke test")
    if flops_only is not None:
        parser.add_argument("--flops-only", action="store_true", help=f"count the FLOPs{flops_only} (XLA on abstract "
                            "shapes, PyTorch on meta tensors) and the floor at the device's peak; run nothing")
    parser.add_argument("--skip-torch", action="store_true", help="jaxgen only")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads on CPU (default: "
                        f"torch's own; 1 helps on a machine other processes load{threads_note})")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds since start after which the "
                        "remaining measurements are skipped (and recorded as skipped)")
    parser.add_argument("--json", type=Path, default=None)


def parse_lists(parser: argparse.ArgumentParser, parts: tuple[str, ...]) -> argparse.Namespace:
    """The parsed arguments, --only and --dtypes as lists (and --torch-dtypes where the script has it: all of
    --dtypes by default, none with --skip-torch), checked against ``parts`` and the two dtypes."""
    args = parser.parse_args()
    args.only = [p for p in args.only.split(",") if p]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    torch_dtypes = []
    if hasattr(args, "torch_dtypes"):
        args.torch_dtypes = args.dtypes if args.torch_dtypes is None else [d for d in args.torch_dtypes.split(",") if d]
        torch_dtypes = args.torch_dtypes = [] if args.skip_torch else args.torch_dtypes
    if unknown := set(args.only) - set(parts) or set(args.dtypes + torch_dtypes) - {"float32", "bfloat16"}:
        parser.error(f"unknown parts or dtypes: {sorted(unknown)}")
    return args


def _seconds(side: dict | None) -> str:
    if not side:
        return "-"
    if "seconds" in side:
        return f"{side['seconds']:.4g}"
    return "skipped" if "skipped" in side else "error"


def print_table(rows: list[dict]) -> None:
    """One line per (part, dtype): both sides' times, the speed-up, the compile time, the FLOPs and the floor."""
    print("| part | dtype | unit | jaxgen | diffusers | speed-up | jaxgen compile s | GFLOP | best matmul GFLOP/s "
          "| floor | jaxgen / floor | of matmul rate (jaxgen / diffusers) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, ref = r.get("jaxgen") or {}, r.get("diffusers") or {}
        speedup = f"{ref['seconds'] / ours['seconds']:.2f}x" if "seconds" in ours and "seconds" in ref else "-"
        compile_s = ours.get("compile_s", ours.get("first_call_s"))
        compile_note = "" if "compile_s" in ours or compile_s is None else " (first call)"
        floor = r.get("floor_s")
        ratio = f"{ours['seconds'] / floor:.2f}" if floor and "seconds" in ours else "-"
        fraction = lambda side: fmt(side.get("fraction_of_matmul_rate"), ".0%")
        print(f"| {r['part']} | {r['dtype']} | {r['unit']} | {_seconds(r.get('jaxgen'))} | {_seconds(r.get('diffusers'))} "
              f"| {speedup} | {fmt(compile_s, '.1f')}{compile_note} | {fmt(r.get('flops') and r['flops'] / 1e9, '.1f')} "
              f"| {fmt(r.get('matmul_flops_per_s') and r['matmul_flops_per_s'] / 1e9, '.0f')} | {fmt(floor, '.4g')} "
              f"| {ratio} | {fraction(ours)} / {fraction(ref)} |")
