"""Sharding on 8 fake CPU devices: meshes, partition specs of named params, placement into shards,
padded batches, and sampling that gives the same images on 1, 8 (data) and 2x4 (data x model) devices."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgen import sharding
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel, PixArtTransformer2DModelConfig
from jaxgen.text.t5 import T5Config, T5EncoderModel
from tests.conftest import CORPUS, rel_l2

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS in tests/conftest.py)")

STEPS = 2
CALL = dict(height=16, width=16, num_inference_steps=STEPS, output_type="np", use_resolution_binning=False)
PROMPTS = ["a photo of a cat", "an astronaut riding a horse on the moon", "the quick brown fox"]


def _specs(model, mesh, shapes=None) -> dict[str, P]:
    specs = sharding.param_specs(model, mesh, shapes)
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    return {"/".join(k.key for k in path): spec for path, spec in flat}


@pytest.fixture(scope="module")
def mesh24():
    return sharding.make_mesh(data=2, model=4)


# --------------------------------------------------------------------------- meshes and rules


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "model") and dict(mesh.shape) == {"data": 8, "model": 1}
    assert dict(sharding.make_mesh(model=4).shape) == {"data": 2, "model": 4}
    assert dict(sharding.make_mesh(data=4).shape) == {"data": 4, "model": 2}
    one = sharding.make_mesh(1, 1)
    assert one.devices.size == 1 and sharding.data_size(one) == 1
    with pytest.raises(ValueError, match="does not divide"):
        sharding.make_mesh(model=3)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(data=4, model=4)


def test_logical_rules():
    mesh = sharding.make_mesh(data=2, model=4)
    assert sharding.logical_to_mesh_axes(("batch", "length", "embed")) == P("data")
    assert sharding.logical_to_mesh_axes(("embed", "mlp")) == P(None, "model")
    assert sharding.logical_to_mesh_axes(("embed", "mlp"), mesh=mesh, shape=(32, 66)) == P()  # 66 % 4: replicated
    assert sharding.logical_to_mesh_axes(("heads", "mlp"), mesh=mesh, shape=(8, 8)) == P("model")  # one use per axis
    assert sharding.logical_to_mesh_axes(("embed", "mlp"), mesh=sharding.make_mesh()) == P()  # model axis of size 1
    with pytest.raises(ValueError, match="no rule"):
        sharding.logical_to_mesh_axes(("nonsense",))


def test_t5_param_specs(mesh24):
    specs = _specs(T5EncoderModel(T5Config.tiny()), mesh24)
    assert specs["encoder/block.0/layer.1/DenseReluDense/wi_0/kernel"] == P(None, "model")
    assert specs["encoder/block.1/layer.1/DenseReluDense/wi_1/kernel"] == P(None, "model")
    assert specs["encoder/block.0/layer.1/DenseReluDense/wo/kernel"] == P("model")
    for name in "qkv":
        assert specs[f"encoder/block.1/layer.0/SelfAttention/{name}/kernel"] == P(None, "model")
    assert specs["encoder/block.1/layer.0/SelfAttention/o/kernel"] == P("model")
    for replicated in ("shared/embedding", "encoder/final_layer_norm/scale", "encoder/block.0/layer.0/layer_norm/scale",
                       "encoder/block.0/layer.0/SelfAttention/relative_attention_bias/embedding"):
        assert specs[replicated] == P(), replicated
    # original T5's un-gated `wi`; a width that does not divide by the model axis stays whole
    plain = _specs(T5EncoderModel(T5Config.tiny(feed_forward_proj="relu")), mesh24)
    assert plain["encoder/block.0/layer.1/DenseReluDense/wi/kernel"] == P(None, "model")
    odd = _specs(T5EncoderModel(T5Config.tiny().replace(d_ff=66)), mesh24)
    assert odd["encoder/block.0/layer.1/DenseReluDense/wi_0/kernel"] == P()
    assert odd["encoder/block.0/layer.0/SelfAttention/q/kernel"] == P(None, "model")
    # a data-only mesh replicates every param
    assert set(_specs(T5EncoderModel(T5Config.tiny()), sharding.make_mesh()).values()) == {P()}


def test_pixart_param_specs(mesh24):
    specs = _specs(PixArtTransformer2DModel(PixArtTransformer2DModelConfig.tiny()), mesh24)
    block = "transformer_blocks.1"
    for attn in ("attn1", "attn2"):
        for name in ("to_q", "to_k", "to_v"):
            assert specs[f"{block}/{attn}/{name}/kernel"] == P(None, "model")
            assert specs[f"{block}/{attn}/{name}/bias"] == P("model")
        assert specs[f"{block}/{attn}/to_out.0/kernel"] == P("model")
        assert specs[f"{block}/{attn}/to_out.0/bias"] == P()
    assert specs[f"{block}/ff/net.0/proj/kernel"] == P(None, "model")
    assert specs[f"{block}/ff/net.0/proj/bias"] == P("model")
    assert specs[f"{block}/ff/net.2/kernel"] == P("model")
    for replicated in ("pos_embed/proj/kernel", "adaln_single/linear/kernel", "caption_projection/linear_1/kernel",
                       "proj_out/kernel", "scale_shift_table", f"{block}/scale_shift_table", f"{block}/ff/net.2/bias"):
        assert specs[replicated] == P(), replicated


def test_real_t5_xxl_spreads_over_the_model_axis(real_configs):
    """T5-XXL (4.76B params) on a 1 x 8 mesh: about 0.71B params per device (shapes only, nothing allocated)."""
    config = json.loads((real_configs / "PixArt-alpha__PixArt-XL-2-1024-MS" / "text_encoder" / "config.json").read_text())
    model = T5EncoderModel.from_config(config)
    mesh = sharding.make_mesh(data=1, model=8)
    shapes = model.param_shapes()
    specs = sharding.param_specs(model, mesh, shapes)
    sizes = [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)]
    split = [("model" in s) for s in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, P))]
    total = sum(sizes)
    per_device = sum(n / 8 if s else n for n, s in zip(sizes, split))
    assert total > 4.7e9 and per_device < 0.16 * total


# --------------------------------------------------------------------------- placement


def test_from_pretrained_places_params_into_their_shards(tiny_pixart, mesh24, monkeypatch, tmp_path):
    from jaxgen.modeling import ORBAX_PARAMS_DIR, save_orbax_params

    folder, _ = tiny_pixart
    blocks: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (global shape, block handed to a device)
    original = jax.make_array_from_callback

    def recording(shape, sharding_, callback, *args, **kwargs):
        def cb(index):
            block = callback(index)
            blocks.append((tuple(shape), block.shape))
            return block
        return original(shape, sharding_, cb, *args, **kwargs)

    monkeypatch.setattr(jax, "make_array_from_callback", recording)
    module, params = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder", mesh=mesh24)
    monkeypatch.undo()
    _, reference = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder")
    wanted = sharding.param_shardings(module, mesh24)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, x), s, ref in zip(leaves, jax.tree_util.tree_leaves(wanted), jax.tree_util.tree_leaves(reference)):
        assert x.sharding == s, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    wi = params["encoder"]["block.0"]["layer.1"]["DenseReluDense"]["wi_0"]["kernel"]
    assert wi.shape == (32, 64) and wi.sharding.spec == P(None, "model")
    assert {s.data.shape for s in wi.addressable_shards} == {(32, 16)}
    # every split param reached each device as its block only, never whole
    split = {shape for shape, block in blocks if block != shape}
    assert (32, 64) in split and all(block[-1] * 4 == shape[-1] or block[0] * 4 == shape[0]
                                     for shape, block in blocks if block != shape)

    # converted (orbax) params restore straight into the same shards
    converted = tmp_path / "text_encoder"
    save_orbax_params(converted / ORBAX_PARAMS_DIR, reference)
    restored = module.load_params(converted, mesh=mesh24)
    for x, s, ref in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(wanted), jax.tree_util.tree_leaves(reference)):
        assert x.sharding == s
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))


@pytest.mark.parametrize("rows,padded", [(8, 8), (3, 8), (9, 16)])
def test_shard_batch_pads_and_gathers(rows, padded):
    mesh = sharding.make_mesh()
    x = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3)
    out = sharding.shard_batch(x, mesh)
    assert out.shape == (padded, 2, 3) and out.sharding.spec == P("data")
    assert {s.data.shape for s in out.addressable_shards} == {(padded // 8, 2, 3)}
    np.testing.assert_array_equal(sharding.gather_rows(out, rows), x)
    np.testing.assert_array_equal(np.asarray(out)[rows:], np.repeat(x[-1:], padded - rows, axis=0))


def test_shard_batch_on_data_by_model_mesh(mesh24):
    out = sharding.shard_batch(np.ones((3, 5), np.int32), mesh24)
    assert out.shape == (4, 5) and len(out.addressable_shards) == 8
    assert {s.data.shape for s in out.addressable_shards} == {(2, 5)}  # split on data, whole on model


# --------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def pipes(tiny_pixart, mesh24):
    """The tiny PixArt pipeline on 1 device, on 8 (data, the default) and on 2 x 4 (data x model)."""
    from jaxgen import PixArtAlphaPipeline

    folder, _ = tiny_pixart
    out = {
        "1": PixArtAlphaPipeline.from_pretrained(folder, mesh=sharding.make_mesh(1, 1)),
        "8": PixArtAlphaPipeline.from_pretrained(folder),
        "2x4": PixArtAlphaPipeline.from_pretrained(folder, mesh=mesh24),
    }
    for pipe in out.values():
        pipe.set_progress_bar_config(disable=True)
    return out


def test_default_mesh_and_param_placement(pipes, mesh24):
    assert dict(pipes["8"].mesh.shape) == {"data": 8, "model": 1}
    kernel = pipes["8"].transformer.variables["params"]["transformer_blocks.0"]["ff"]["net.0"]["proj"]["kernel"]
    assert kernel.sharding == NamedSharding(pipes["8"].mesh, P()) and len(kernel.addressable_shards) == 8
    kernel = pipes["2x4"].transformer.variables["params"]["transformer_blocks.0"]["ff"]["net.0"]["proj"]["kernel"]
    assert kernel.sharding == NamedSharding(mesh24, P(None, "model"))
    assert {s.data.shape for s in kernel.addressable_shards} == {(24, 24)}
    wo = pipes["2x4"].text_encoder.variables["params"]["encoder"]["block.1"]["layer.1"]["DenseReluDense"]["wo"]["kernel"]
    assert wo.sharding.spec == P("model")


def test_images_do_not_depend_on_the_device_count(pipes):
    """8 prompts on 1 and on 8 devices; 3 of them (padded to 8 rows, and to 4 on 2 x 4): the same images.

    The noise is drawn for the whole unpadded batch with jax's partitionable threefry, whose rows do
    not depend on how many rows are drawn, so the 3-prompt runs compare with the first 3 images of
    the 8-prompt one (one compile less on this 2-core machine).
    """
    key = jax.random.key(0)
    np.testing.assert_array_equal(jax.random.normal(key, (8, 5))[:3], jax.random.normal(key, (3, 5)))
    prompts = PROMPTS + CORPUS
    ref = pipes["1"](prompts, rng=11, **CALL).images
    assert ref.shape == (8, 16, 16, 3) and not np.allclose(ref[0], ref[1])
    np.testing.assert_allclose(pipes["8"](prompts, rng=11, **CALL).images, ref, rtol=0, atol=1e-5)
    for name in ("8", "2x4"):
        images = pipes[name](prompts[:3], rng=11, **CALL).images
        assert images.shape == (3, 16, 16, 3)
        np.testing.assert_allclose(images, ref[:3], rtol=0, atol=1e-5)


def test_stochastic_scheduler_noise_does_not_depend_on_the_device_count(pipes):
    """DDPM draws noise at every step: padded to 8 rows or not, each image gets the same noise; the
    step callback sees the batch without its padding rows."""
    from jaxgen import DDPMScheduler, PixArtAlphaPipeline

    images, seen = {}, []
    for name in ("1", "8"):
        pipe = PixArtAlphaPipeline(**pipes[name].components)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        callback = (lambda i, t, latents: seen.append(latents.shape)) if name == "8" else None
        images[name] = pipe(PROMPTS, rng=5, callback=callback, **CALL).images
    jax.effects_barrier()
    # the same noise (another draw would differ by ~0.1); DDPM's 1/sqrt(alpha_bar) amplifies
    # the 1e-7 float differences of other batch splits, hence a relative bound
    assert rel_l2(images["8"], images["1"]) < 1e-5
    np.testing.assert_allclose(images["8"], images["1"], rtol=0, atol=5e-5)
    assert seen == [(3, 8, 8, 4)] * STEPS


def test_pipeline_mesh_from_components(pipes, tiny_pixart, mesh24):
    from jaxgen import AutoPipelineForText2Image, PixArtAlphaPipeline
    from jaxgen.models.autoencoder_kl import AutoencoderKL

    other = PixArtAlphaPipeline(**pipes["2x4"].components)
    assert other.mesh == mesh24 and other.transformer is pipes["2x4"].transformer
    moved = PixArtAlphaPipeline(**pipes["8"].components, mesh=mesh24)
    assert moved.transformer.variables["params"]["transformer_blocks.0"]["attn1"]["to_q"]["kernel"].sharding.spec == P(None, "model")
    folder, _ = tiny_pixart
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")  # a bare model: one device
    bare = PixArtAlphaPipeline(transformer=PixArtTransformer2DModel.from_pretrained(folder, subfolder="transformer"),
                               vae=vae, scheduler=pipes["1"].scheduler)
    assert bare.mesh.devices.size == 1
    auto = AutoPipelineForText2Image.from_pretrained(folder, mesh=mesh24, text_encoder=None)
    assert auto.mesh is mesh24


def test_warmup_compiles_so_the_call_does_not(pipes):
    from jaxgen.pipelines import pipeline_utils, sampling
    from jaxgen.text import encoding

    pipe = pipes["8"]
    jitted = (sampling.denoise, encoding._encode, pipeline_utils.decode_latents)
    # a size no other test uses, so that its programs are not compiled yet
    settings = dict(height=16, width=40, num_inference_steps=3, guidance_scale=4.5, output_type="np",
                    use_resolution_binning=False)
    before = [f._cache_size() for f in jitted]
    seconds = pipe.warmup(batch_size=2, **settings)
    warmed = [f._cache_size() for f in jitted]
    assert seconds > 0 and warmed[0] == before[0] + 1 and warmed[2] == before[2] + 1
    from tests.conftest import count_compiles

    with count_compiles() as compiled:
        images = pipe(PROMPTS[:2], rng=0, **settings).images
    assert compiled() == 0 and [f._cache_size() for f in jitted] == warmed
    assert images.shape == (2, 16, 40, 3) and np.isfinite(images).all()


def test_set_compilation_cache(tmp_path, monkeypatch):
    from jax.experimental.compilation_cache import compilation_cache

    from jaxgen.pipelines import compilation_cache as jaxgen_cache

    saved = {k: getattr(jax.config, k) for k in
             ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jaxgen_cache.set_compilation_cache(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and jax.config.jax_enable_compilation_cache
        jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()
        assert any((tmp_path / "xla").iterdir())  # the program was written
        jaxgen_cache.set_compilation_cache(None)
        assert not jax.config.jax_enable_compilation_cache
        # the default: JAXGEN_COMPILATION_CACHE, applied when the first pipeline is built
        monkeypatch.setattr(jaxgen_cache, "_cache_chosen", False)
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("JAXGEN_COMPILATION_CACHE", str(tmp_path / "env"))
        jaxgen_cache.apply_default()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env") and jaxgen_cache._cache_chosen
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
        compilation_cache.reset_cache()


# --------------------------------------------------------------------------- the default mesh


GIB = 2**30


@pytest.mark.parametrize("sizes,device_gib,replicated,expected", [
    # PixArt-α in bfloat16 on 16 GiB chips (v5e): 10.2 GiB of params > 0.6 x 16 -> split in 2
    ({"text_encoder": 8.87, "transformer": 1.14, "vae": 0.16}, 16, ("vae",), (4, 2)),
    # the same in float32: 20.3 GiB; halves (10.2 GiB) do not fit, quarters do
    ({"text_encoder": 17.74, "transformer": 2.28, "vae": 0.31}, 16, ("vae",), (2, 4)),
    # int8 T5 + bfloat16: 5.9 GiB fits one chip
    ({"text_encoder": 4.56, "transformer": 1.14, "vae": 0.16}, 16, ("vae",), (8, 1)),
    # T5-XXL bf16 alone fits (8.87 < 9.6 GiB)
    ({"text_encoder": 8.87}, 16, (), (8, 1)),
    # DeepFloyd IF-I-XL in float32 (4.3B params, 16 GiB) with T5-XXL float32
    ({"text_encoder": 17.74, "unet": 4.3e9 * 4 / GIB}, 16, (), (2, 4)),
    # the bf16 pipeline on 80 GiB GPUs, and on 32 GiB v4 chips: data parallel
    ({"text_encoder": 8.87, "transformer": 1.14, "vae": 0.16}, 80, ("vae",), (8, 1)),
    ({"text_encoder": 8.87, "transformer": 1.14, "vae": 0.16}, 32, ("vae",), (8, 1)),
    # a replicated component counts whole on every device: 4 + 12/m <= 9.6 needs m = 4
    ({"big": 12.0, "vae": 4.0}, 16, ("vae",), (2, 4)),
])
def test_auto_mesh_decisions(sizes, device_gib, replicated, expected, caplog):
    sizes = {k: int(v * GIB) for k, v in sizes.items()}
    with caplog.at_level("INFO", logger="jaxgen.sharding"):
        mesh = sharding.auto_mesh(sizes, device_gib * GIB, jax.devices()[:8], replicated=replicated)
    assert mesh.axis_names == ("data", "model") and (mesh.shape["data"], mesh.shape["model"]) == expected
    assert f"mesh data={expected[0]} x model={expected[1]}" in caplog.text


def test_auto_mesh_edges(caplog):
    devices = jax.devices()[:8]
    huge = {"text_encoder": 100 * GIB}
    assert dict(sharding.auto_mesh(huge, None, devices).shape) == {"data": 8, "model": 1}  # CPU: memory unknown
    assert dict(sharding.auto_mesh({}, 16 * GIB, devices).shape) == {"data": 8, "model": 1}
    assert sharding.auto_mesh(huge, 16 * GIB, devices[:1]).devices.size == 1
    # model sizes are divisors of the device count: 25 GiB on 6 devices of 16 GiB -> 3 (12.5 > 9.6 GiB for 2)
    assert dict(sharding.auto_mesh({"a": 25 * GIB}, 16 * GIB, devices[:6]).shape) == {"data": 2, "model": 3}
    assert dict(sharding.auto_mesh({"a": 25 * GIB}, 16 * GIB, devices[:8], fraction=0.9).shape) == {"data": 4, "model": 2}
    with caplog.at_level("WARNING", logger="jaxgen.sharding"):  # too big even split 8 ways: all on model, warned
        mesh = sharding.auto_mesh(huge, 8 * GIB, devices)
    assert dict(mesh.shape) == {"data": 1, "model": 8} and "out-of-memory" in caplog.text
    with pytest.raises(ValueError, match="fraction"):
        sharding.auto_mesh(huge, 16 * GIB, devices, fraction=1.5)
    assert sharding.device_memory_bytes() is None  # CPU reports no memory limit


def test_pipeline_default_mesh(pipes, tiny_pixart, monkeypatch):
    """On CPU the default is data parallel (test_default_mesh_and_param_placement); with a device
    memory reported, the component sizes are read from the configs' shapes before loading, and a
    small enough device gets a model axis."""
    from jaxgen import PixArtAlphaPipeline
    from jaxgen.quantize import param_bytes

    folder, _ = tiny_pixart
    loaded = {n: param_bytes(getattr(pipes["8"], n).variables["params"]) for n in ("text_encoder", "transformer", "vae")}
    calls = []
    real = sharding.auto_mesh

    def recording(sizes, device_bytes, devices=None, **kwargs):
        calls.append((dict(sizes), kwargs))
        return real(sizes, device_bytes, devices, **kwargs)

    monkeypatch.setattr(sharding, "auto_mesh", recording)
    split = loaded["text_encoder"] + loaded["transformer"]
    device_bytes = int((split / 4 + loaded["vae"]) / sharding.AUTO_MESH_FRACTION) + 1  # fits 4 ways, not 2
    assert split / 2 + loaded["vae"] > sharding.AUTO_MESH_FRACTION * device_bytes
    monkeypatch.setattr(sharding, "device_memory_bytes", lambda device=None: device_bytes)
    # the VAE passed in counts with its own params; the others from their configs
    pipe = PixArtAlphaPipeline.from_pretrained(folder, vae=pipes["8"].vae)
    assert calls == [(loaded, {"replicated": ["vae"]})]
    assert dict(pipe.mesh.shape) == {"data": 2, "model": 4}
    kernel = pipe.transformer.variables["params"]["transformer_blocks.0"]["ff"]["net.0"]["proj"]["kernel"]
    assert kernel.sharding.spec == P(None, "model")
    # a component not loaded does not count
    monkeypatch.setattr(sharding, "device_memory_bytes", lambda device=None: 2**40)
    pipe = PixArtAlphaPipeline.from_pretrained(folder, text_encoder=None, tokenizer=None)
    assert set(calls[-1][0]) == {"transformer", "vae"} and dict(pipe.mesh.shape) == {"data": 8, "model": 1}


def test_unet_splits_over_the_model_axis_and_gives_the_same_output():
    """IF-I-XL (4.3B) needs a model axis on 16 GiB chips: attention and resnet convs split, output unchanged."""
    from jaxgen.models.unet_2d_condition import UNet2DConditionModel, UNet2DConditionModelConfig

    # two levels of the tiny IF-like UNet: the same block types, half the program to partition and compile
    module = UNet2DConditionModel(config=UNet2DConditionModelConfig.tiny(
        block_out_channels=(16, 32), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D")))
    rng = np.random.default_rng(0)  # random params from the shapes: compiling flax's init took a minute here
    params = jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), jnp.float32),
                                    module.param_shapes())
    mesh = sharding.make_mesh(data=2, model=4)
    specs = sharding.param_specs(module, mesh, params)
    assert specs["down_blocks.1"]["attentions.0"]["add_k_proj"]["kernel"] == P(None, "model")
    assert specs["down_blocks.0"]["resnets.0"]["conv1"]["kernel"] == P(None, None, None, "model")
    assert specs["down_blocks.0"]["resnets.0"]["conv2"]["kernel"] == P(None, None, "model")
    assert specs["conv_in"]["kernel"] == P()
    placed = sharding.place_params(params, mesh, module)
    sample = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    text = rng.standard_normal((2, 5, 24)).astype(np.float32)
    apply = jax.jit(lambda p, x, t, e: module.apply({"params": p}, x, t, e).sample)
    want = apply(params, sample, jnp.array([10, 999]), text)
    got = apply(placed, sharding.shard_batch(sample, mesh), jnp.array([10, 999]), sharding.shard_batch(text, mesh))
    assert float(jnp.max(jnp.abs(got - want))) < 1e-5 * max(1.0, float(jnp.max(jnp.abs(want))))
