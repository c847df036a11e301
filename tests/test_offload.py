"""``enable_model_cpu_offload()``: the models in host memory, on the devices only while they run, same images."""

from __future__ import annotations

import gc
import weakref

import jax
import numpy as np
import pytest

from tests.conftest import count_compiles

STEPS = dict(num_inference_steps=2, rng=0, output_type="np")


def _models(pipe) -> dict:
    """The model components (a combined pipeline's by diffusers' names) that are loaded."""
    return {name: value for name, value in pipe.components.items()
            if pipe._components[name].kind == "model" and value is not None}


def _assert_in_host_memory(pipe) -> None:
    """Every model component is offloaded, its params numpy or jax arrays in ``pinned_host`` memory."""
    from jaxgen.pipelines.offload import OffloadedModel

    models = _models(pipe)
    assert models
    for name, value in models.items():
        assert isinstance(value, OffloadedModel), name
        for leaf in jax.tree_util.tree_leaves(value.params):
            assert isinstance(leaf, np.ndarray) or leaf.sharding.memory_kind == "pinned_host", (name, leaf.sharding)


def _one_device():
    from jaxgen import sharding

    return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def test_pinned_host_memory_on_this_backend():
    """The CPU backend has ``pinned_host`` memory too: the offloaded params are jax arrays there, not numpy."""
    from jaxgen.pipelines.offload import host_memory_kind

    assert host_memory_kind(_one_device()) == "pinned_host"


def test_pixart_offload_same_images_and_no_params_on_the_devices(tiny_hub):
    import jaxgen
    from jaxgen import sharding

    mesh = sharding.make_mesh(1, 2, devices=jax.devices()[:2])  # the transformer split over a model axis
    pipe = jaxgen.PixArtAlphaPipeline.from_pretrained(tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"], mesh=mesh)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a photo of a cat", height=256, width=256, use_resolution_binning=False, **STEPS)
    expected = pipe(**call).images
    device_leaf = weakref.ref(jax.tree_util.tree_leaves(pipe.transformer.variables)[0])
    layout = jax.tree_util.tree_map(lambda x: x.sharding.spec, pipe.transformer.variables["params"])

    pipe.enable_model_cpu_offload()
    gc.collect()
    assert device_leaf() is None  # the device copy is freed, not kept anywhere
    _assert_in_host_memory(pipe)
    assert pipe.transformer.config.sample_size == 64 and pipe.vae.dtype == pipe.text_encoder.dtype
    module, params = jaxgen.pipelines.pipeline_utils.unbind(pipe.transformer)  # placed now, as it was
    assert jax.tree_util.tree_map(lambda x: x.sharding.spec, params) == layout
    assert {x.sharding.memory_kind for x in jax.tree_util.tree_leaves(params)} == {"device"}
    del module, params
    with count_compiles() as compiled:  # the same layouts: the programs compiled without offload serve
        first = pipe(**call).images
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(pipe(**call).images, expected)  # twice
    assert compiled() == 0
    _assert_in_host_memory(pipe)

    other = jaxgen.PixArtAlphaPipeline(**pipe.components)  # built from offloaded components: offloaded too
    assert other.mesh is mesh
    _assert_in_host_memory(other)

    pipe.disable_model_cpu_offload()
    leaves = jax.tree_util.tree_leaves(pipe.transformer.variables)
    assert {x.sharding.memory_kind for x in leaves} == {"device"}
    np.testing.assert_array_equal(pipe(**call).images, expected)


def test_kandinsky22_combined_offload_same_images(tiny_hub):
    """``AutoPipelineForText2Image`` on the 2.2 decoder: the combined pipeline forwards it to the prior and the
    decoder; the deferred image encoder stays out of device memory."""
    import jaxgen
    from jaxgen.pipelines.loading import DeferredModel

    pipe = jaxgen.AutoPipelineForText2Image.from_pretrained(tiny_hub["kandinsky-community/kandinsky-2-2-decoder"],
                                                            mesh=_one_device())
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a photo of a cat", height=64, width=64, prior_num_inference_steps=2, **STEPS)
    expected = pipe(**call).images
    with pytest.raises(ValueError, match="`device`"):
        pipe.enable_model_cpu_offload(device="cuda")
    assert not isinstance(pipe.unet, DeferredModel)  # refused before anything moved

    pipe.enable_model_cpu_offload()
    assert isinstance(pipe.prior_image_encoder, DeferredModel)
    models = {k: v for k, v in _models(pipe).items() if k != "prior_image_encoder"}
    assert {"unet", "movq", "prior_prior", "prior_text_encoder"} <= set(models)
    for name, value in models.items():
        assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree_util.tree_leaves(value.params)), name
    for _ in range(2):
        np.testing.assert_array_equal(pipe(**call).images, expected)

    # an image input loads the deferred encoder: into host memory, under offload
    prior = pipe.prior_pipe
    pixels = np.zeros((1, prior.image_encoder.config.image_size, prior.image_encoder.config.image_size, 3), np.float32)
    embeds = prior.image_embeds(pixels)
    assert embeds.shape[0] == 1
    assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree_util.tree_leaves(prior.image_encoder.params))


def test_if_offload_same_images(tiny_hub):
    """DeepFloyd IF stage I: T5, UNet and the safety checker offloaded; the watermarker is no model."""
    import jaxgen

    pipe = jaxgen.IFPipeline.from_pretrained(tiny_hub["DeepFloyd/IF-I-XL-v1.0"], mesh=_one_device())
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a photo of a cat", **STEPS)
    expected = pipe(**call).images
    pipe.enable_model_cpu_offload(device=None)
    _assert_in_host_memory(pipe)
    assert {"text_encoder", "unet", "safety_checker"} <= set(_models(pipe))
    for _ in range(2):
        np.testing.assert_array_equal(pipe(**call).images, expected)

    # loaded so (model_cpu_offload=True): read into host memory, never placed; the same images
    loaded = jaxgen.IFPipeline.from_pretrained(tiny_hub["DeepFloyd/IF-I-XL-v1.0"], mesh=_one_device(),
                                               model_cpu_offload=True)
    loaded.set_progress_bar_config(disable=True)
    _assert_in_host_memory(loaded)
    assert {"text_encoder", "unet", "safety_checker"} <= set(_models(loaded))
    np.testing.assert_array_equal(loaded(**call).images, expected)


def test_device_other_than_none_is_refused(tiny_hub):
    import jaxgen

    pipe = jaxgen.IFPipeline.from_pretrained(tiny_hub["DeepFloyd/IF-I-XL-v1.0"], mesh=_one_device())
    for device in ("cuda", 0, jax.devices()[0]):
        with pytest.raises(ValueError, match="`device` must be None"):
            pipe.enable_model_cpu_offload(device=device)
    from jaxgen.pipelines.loading import HostModel

    assert not any(isinstance(v, HostModel) for v in _models(pipe).values())  # refused before anything moved


# -- from_pretrained(..., model_cpu_offload=True): read into host memory, never placed -----------------------


def test_pixart_loaded_offloaded_same_images(tiny_hub):
    """Loaded offloaded (split over a model axis too): every model in host memory with its mesh sharding, the
    device copy made per use with the layout a plain load has, the same images; with int8 the T5 is int8 too."""
    import jaxgen
    from jaxgen import sharding
    from jaxgen.pipelines.pipeline_utils import unbind

    folder = tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"]
    mesh = sharding.make_mesh(1, 2, devices=jax.devices()[:2])
    call = dict(prompt="a photo of a cat", height=256, width=256, use_resolution_binning=False, **STEPS)
    for options in ({}, {"text_encoder_quantization": "int8"}):
        plain = jaxgen.PixArtAlphaPipeline.from_pretrained(folder, mesh=mesh, **options)
        plain.set_progress_bar_config(disable=True)
        expected = plain(**call).images
        layout = jax.tree_util.tree_map(lambda x: x.sharding.spec, plain.transformer.variables["params"])
        del plain
        pipe = jaxgen.PixArtAlphaPipeline.from_pretrained(folder, mesh=mesh, model_cpu_offload=True, **options)
        pipe.set_progress_bar_config(disable=True)
        _assert_in_host_memory(pipe)
        assert pipe._model_cpu_offload and pipe.mesh is mesh
        held = jax.tree_util.tree_map(lambda x: x.sharding.spec, pipe.transformer.params)
        assert held == layout
        _, params = unbind(pipe.transformer)
        assert jax.tree_util.tree_map(lambda x: x.sharding.spec, params) == layout
        assert pipe.text_encoder.module.quantized == bool(options)
        np.testing.assert_array_equal(pipe(**call).images, expected)
        _assert_in_host_memory(pipe)


def test_combined_loaded_offloaded_same_images(tiny_hub):
    """The Auto pipeline forwards it; the combined pipeline to both parts; the deferred image encoder stays
    deferred (host memory once loaded), and a component passed in resident is offloaded too."""
    import jaxgen
    from jaxgen.pipelines.loading import DeferredModel

    folder = tiny_hub["kandinsky-community/kandinsky-2-2-decoder"]
    call = dict(prompt="a photo of a cat", height=64, width=64, prior_num_inference_steps=2, **STEPS)
    plain = jaxgen.AutoPipelineForText2Image.from_pretrained(folder, mesh=_one_device())
    plain.set_progress_bar_config(disable=True)
    expected = plain(**call).images
    pipe = jaxgen.AutoPipelineForText2Image.from_pretrained(folder, mesh=_one_device(), model_cpu_offload=True,
                                                            movq=plain.movq)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.prior_image_encoder, DeferredModel)
    assert pipe.prior_pipe._model_cpu_offload and pipe.decoder_pipe._model_cpu_offload
    for name, value in _models(pipe).items():
        if name != "prior_image_encoder":
            assert all(x.sharding.memory_kind == "pinned_host" for x in jax.tree_util.tree_leaves(value.params)), name
    assert {"unet", "movq", "prior_prior", "prior_text_encoder"} <= set(_models(pipe))
    np.testing.assert_array_equal(pipe(**call).images, expected)


def test_default_mesh_sized_by_the_largest_model(tiny_hub, monkeypatch):
    """Offloaded, the default mesh needs room for one model at a time: no model axis for the sum's sake."""
    from jaxgen import hub, sharding
    from jaxgen.pipelines import loading
    from jaxgen.pipelines.pixart_alpha import PixArtAlphaPipeline

    root = tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"]
    specs, index = PixArtAlphaPipeline._components, hub.load_model_index(root)
    sizes = {name: loading.config_param_bytes(spec.model_class, hub.component_folder(root, name), jax.numpy.float32)[1]
             for name, spec in specs.items() if spec.kind == "model" and index.get(name)}
    largest = max(sizes.values())
    device = (largest + sum(sizes.values())) / 2 / sharding.AUTO_MESH_FRACTION  # between the largest and the sum
    monkeypatch.setattr(sharding, "device_memory_bytes", lambda *a: int(device))
    together = loading.default_mesh(specs, root, index, jax.numpy.float32, {})
    offloaded = loading.default_mesh(specs, root, index, jax.numpy.float32, {}, one_at_a_time=True)
    assert together.shape["model"] > 1 and offloaded.shape["model"] == 1


def test_kandinsky3_loaded_offloaded(tiny_hub):
    import jaxgen
    from jaxgen.pipelines.offload import OffloadedModel

    folder = tiny_hub["kandinsky-community/kandinsky-3"]
    with pytest.raises(ValueError, match="contradicts model_cpu_offload"):
        jaxgen.Kandinsky3Pipeline.from_pretrained(folder, model_cpu_offload=True, text_encoder_offload=False)
    pipe = jaxgen.Kandinsky3Pipeline.from_pretrained(folder, mesh=_one_device(), model_cpu_offload=True,
                                                     text_encoder_int8=True)
    _assert_in_host_memory(pipe)
    assert isinstance(pipe.text_encoder, OffloadedModel) and pipe.text_encoder.module.quantized


def test_cli_model_cpu_offload_is_passed_on(tiny_hub, monkeypatch, tmp_path):
    """``--model-cpu-offload`` (generate and batch) reaches ``from_pretrained`` as ``model_cpu_offload=True``."""
    import jaxgen
    from jaxgen import cli

    folder = str(tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"])
    args = cli._parser().parse_args(["generate", "a cat", "--model", folder, "--model-cpu-offload",
                                     "--text-encoder-int8"])
    assert cli.load_options(args) == {"text_encoder_quantization": "int8", "model_cpu_offload": True}
    assert cli.load_options(cli._parser().parse_args(["generate", "a cat", "--model", folder])) == {}

    seen = []

    class Stop(Exception):
        pass

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("model_cpu_offload"))
        raise Stop

    monkeypatch.setattr(jaxgen.PixArtAlphaPipeline, "from_pretrained", classmethod(spy))
    with pytest.raises(Stop):
        cli.main(["generate", "a cat", "--model", folder, "--model-cpu-offload", "--out", str(tmp_path / "a.png")])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(Stop):
        cli.main(["batch", "--prompts", str(prompts), "--model", folder, "--model-cpu-offload",
                  "--out", str(tmp_path / "set")])
    assert seen == [True, True]
