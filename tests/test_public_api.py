"""The public API as a newcomer types it, from a bare ``import jaxgen``, and the one registry behind it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from jaxgen import registry


def test_bare_import_is_cheap_and_reaches_everything():
    """In a fresh interpreter: ``import jaxgen`` imports no jax/flax/torch; then every subpackage the
    README names, every pipeline, scheduler and model is reachable as an attribute."""
    code = textwrap.dedent(f"""
        import sys
        import jaxgen
        heavy = sorted(m for m in ("jax", "flax", "torch", "transformers", "diffusers") if m in sys.modules)
        assert not heavy, heavy
        for sub in ("models", "schedulers", "sharding", "batch", "text", "pipelines", "hub"):
            assert getattr(jaxgen, sub).__name__ == "jaxgen." + sub, sub
        for name in {sorted(registry.PIPELINES)!r}:
            assert getattr(jaxgen, name).__name__ == name
        for name in {sorted(registry.SCHEDULERS)!r}:
            assert getattr(jaxgen, name) is getattr(jaxgen.schedulers, name)
        for name in {sorted(registry.MODELS)!r}:
            assert getattr(jaxgen.models, name).__name__ == name
        assert jaxgen.models.AutoencoderKLConfig.__name__ == "AutoencoderKLConfig"
        assert jaxgen.schedulers.DDIMSchedulerState.__name__ == "DDIMSchedulerState"
        assert jaxgen.text.T5EncoderModel is jaxgen.models.T5EncoderModel
        assert callable(jaxgen.sharding.make_mesh) and callable(jaxgen.batch.generate_batch)
        assert callable(jaxgen.AutoPipelineForText2Image.from_pretrained)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_unknown_names_raise_attribute_error():
    import jaxgen

    for owner, name in ((jaxgen, "NoSuchPipeline"), (jaxgen.models, "NoSuchModel"), (jaxgen.schedulers, "NoScheduler")):
        with pytest.raises(AttributeError, match=name):
            getattr(owner, name)


def test_every_registration_is_complete():
    """What a family registers resolves: pipelines with their components, models with a key map in
    convert/<module>.py and valid partition rules, Auto-pipeline targets among the pipelines."""
    import re

    import convert

    for name in registry.PIPELINES:
        cls = registry.pipeline_class(name)
        assert cls.__name__ == name and cls._components, name
        assert registry.family_of(name) is not None
    for name, module in registry.MODELS.items():
        cls = registry.load(module, name)
        assert cls.__name__ == name
        if hasattr(cls, "config_class"):  # flax models (the watermarker is a host-side object)
            assert callable(convert._module(name).key_rule), name
        for pattern, axes in getattr(cls, "param_axes", ()):
            re.compile(pattern)
            assert isinstance(axes, tuple)
    for family in registry.FAMILIES:
        for task, mapping in family.tasks.items():
            assert task in registry.TASKS
            assert set(mapping.values()) <= set(family.pipelines), (family.name, task)
        if family.cli_generate is not None:
            module, function = family.cli_generate.split(":")
            assert callable(registry.load(module, function))
    with pytest.raises(ValueError, match="not supported by jaxgen"):
        registry.pipeline_class("StableDiffusionXLPipeline")
