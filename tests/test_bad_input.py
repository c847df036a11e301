"""Bad input, every pipeline: one table of mistakes (by class: types, non-finite numbers, ranges, sizes that cannot
fit, image arrays outside the documented ranges, lists that must agree, unordered timesteps, unexpected
arguments), each tried on every pipeline that takes the argument, from a valid call built as ``warmup`` builds its
placeholders. Each must raise the expected exception type with a message naming the argument, before any
prompt is tokenized (so before any text encoder runs) and before anything is compiled."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import transformers

from jaxgen import registry
from tests.conftest import count_compiles

# pipeline class -> the tiny_hub checkpoint it loads from (``prior=``: the prior of a combined pipeline)
CHECKPOINTS = {
    "PixArtAlphaPipeline": "PixArt-alpha/PixArt-XL-2-512x512",
    "PixArtSigmaPipeline": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    **dict.fromkeys(("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"), "DeepFloyd/IF-I-XL-v1.0"),
    **dict.fromkeys(("IFSuperResolutionPipeline", "IFImg2ImgSuperResolutionPipeline",
                     "IFInpaintingSuperResolutionPipeline"), "DeepFloyd/IF-II-L-v1.0"),
    "StableDiffusionUpscalePipeline": "stabilityai/stable-diffusion-x4-upscaler",
    "KandinskyPriorPipeline": "kandinsky-community/kandinsky-2-1-prior",
    **dict.fromkeys(("KandinskyPipeline", "KandinskyImg2ImgPipeline"), "kandinsky-community/kandinsky-2-1"),
    "KandinskyInpaintPipeline": "kandinsky-community/kandinsky-2-1-inpaint",
    **dict.fromkeys(("KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline"),
                    "kandinsky-community/kandinsky-2-2-prior"),
    **dict.fromkeys(("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline"), "kandinsky-community/kandinsky-2-2-decoder"),
    "KandinskyV22InpaintPipeline": "kandinsky-community/kandinsky-2-2-decoder-inpaint",
    **dict.fromkeys(("KandinskyV22ControlnetPipeline", "KandinskyV22ControlnetImg2ImgPipeline"),
                    "kandinsky-community/kandinsky-2-2-controlnet-depth"),
    **dict.fromkeys(("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline"), "kandinsky-community/kandinsky-3"),
    "WuerstchenPriorPipeline": "warp-ai/wuerstchen-prior",
    "WuerstchenDecoderPipeline": "warp-ai/wuerstchen",
    "UniDiffuserPipeline": "thu-ml/unidiffuser-v1",
}

# combined pipeline -> (its prior pipeline, its decoder pipeline), both among CHECKPOINTS
COMBINED = {
    "KandinskyCombinedPipeline": ("KandinskyPriorPipeline", "KandinskyPipeline"),
    "KandinskyImg2ImgCombinedPipeline": ("KandinskyPriorPipeline", "KandinskyImg2ImgPipeline"),
    "KandinskyInpaintCombinedPipeline": ("KandinskyPriorPipeline", "KandinskyInpaintPipeline"),
    "KandinskyV22CombinedPipeline": ("KandinskyV22PriorPipeline", "KandinskyV22Pipeline"),
    "KandinskyV22Img2ImgCombinedPipeline": ("KandinskyV22PriorPipeline", "KandinskyV22Img2ImgPipeline"),
    "KandinskyV22InpaintCombinedPipeline": ("KandinskyV22PriorPipeline", "KandinskyV22InpaintPipeline"),
    "WuerstchenCombinedPipeline": ("WuerstchenPriorPipeline", "WuerstchenDecoderPipeline"),
}

NAN = float("nan")
# (case, the arguments that make it bad, the exception, the argument its message must name)
CASES = [
    ("guidance nan", dict(guidance_scale=NAN), ValueError, "guidance_scale"),
    ("guidance inf", dict(guidance_scale=math.inf), ValueError, "guidance_scale"),
    ("guidance string", dict(guidance_scale="7"), TypeError, "guidance_scale"),
    ("steps zero", dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    ("steps float", dict(num_inference_steps=2.5), ValueError, "num_inference_steps"),
    ("images zero", dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    ("rng string", dict(rng="seed"), TypeError, "rng"),
    ("torch generator", dict(generator=0), TypeError, "rng"),
    ("unknown argument", dict(sampler="euler"), TypeError, "sampler"),
    ("prompt of ints", dict(prompt=[3]), TypeError, "prompt"),
    ("prompt empty", dict(prompt=[]), ValueError, "prompt"),
    ("negative prompt int", dict(negative_prompt=3), TypeError, "negative_prompt"),
    ("negative prompts too many", dict(negative_prompt=["a", "b", "c"]), ValueError, "negative_prompt"),
    ("callback not callable", dict(callback=3), TypeError, "callback"),
    ("output type", dict(output_type="tensor"), ValueError, "output_type"),
    ("height negative", dict(height=-64), ValueError, "height"),
    ("size beyond memory", dict(height=2**20, width=2**20, num_inference_steps=1), ValueError, "height"),
    ("latents no shape", dict(latents=np.zeros((1,), np.float32)), ValueError, "latents"),
    ("image float 0-255", dict(image=np.full((1, 64, 64, 3), 200.0, np.float32)), ValueError, "image"),
    ("image nan", dict(image=np.full((1, 64, 64, 3), NAN, np.float32)), ValueError, "image"),
    ("image uint16", dict(image=np.zeros((1, 64, 64, 3), np.uint16)), TypeError, "image"),
    ("image empty list", dict(image=[]), ValueError, "image"),
    ("image 0x0", dict(image=np.zeros((1, 0, 0, 3), np.float32)), ValueError, "image"),
    ("mask empty list", dict(mask_image=[]), ValueError, "mask_image"),
    ("timesteps unordered", dict(timesteps=[1, 500, 900]), ValueError, "timesteps"),
    ("eta nan", dict(eta=NAN), ValueError, "eta"),
    ("strength nan", dict(strength=NAN), ValueError, "strength"),
]
# the prompt cases need a pipeline that encodes its prompt; a prior's "pt" output type is valid
NEEDS_TEXT = {"prompt of ints", "prompt empty", "negative prompt int", "negative prompts too many"}


@pytest.fixture(scope="module")
def pipelines(tiny_hub) -> dict:
    """Every pipeline class, loaded from its tiny checkpoint (one load per checkpoint, shared components)."""
    loaded, by_folder = {}, {}
    for name, repo in CHECKPOINTS.items():
        cls = registry.pipeline_class(name)
        if repo in by_folder:
            loaded[name] = cls(**by_folder[repo].components)
        else:
            loaded[name] = by_folder[repo] = cls.from_pretrained(tiny_hub[repo])
        loaded[name].set_progress_bar_config(disable=True)
    for name, (prior, decoder) in COMBINED.items():  # the two pipelines' components, nothing reloaded
        loaded[name] = registry.pipeline_class(name).from_pipes(loaded[prior], loaded[decoder])
    return loaded


def _valid_call(pipe) -> dict:
    """A call that would run: a prompt (or placeholder embeddings) and placeholder images, as ``warmup`` makes."""
    takes = inspect.signature(pipe.__call__).parameters
    if hasattr(pipe, "decoder_pipe"):  # a combined pipeline: a prompt, and the decoder's images (not its embeddings)
        images = pipe.decoder_pipe._placeholder_images(1, None, None, {})
        return {"prompt": "a cat", **{k: v for k, v in images.items() if k in takes}}
    call = {"prompt": "a cat"} if "prompt" in takes and pipe._can_encode_text() else {}
    if not call:
        call.update(pipe._placeholder_embeds(1, True, call))
    for name, value in pipe._placeholder_images(1, None, None, call).items():
        call.setdefault(name, value)
    return call


def test_every_pipeline_is_covered():
    assert set(CHECKPOINTS) | set(COMBINED) == set(registry.PIPELINES)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS) + sorted(COMBINED))
def test_bad_input_is_refused_before_encoding_or_compiling(pipelines, name, monkeypatch):
    pipe = pipelines[name]
    takes = set(inspect.signature(pipe.__call__).parameters)
    tokenized = []
    original = transformers.PreTrainedTokenizerBase.__call__
    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "__call__",
                        lambda self, *a, **k: tokenized.append(a) or original(self, *a, **k))
    base = _valid_call(pipe)
    tried = 0
    for case, bad, error, argument in CASES:
        if not set(bad) <= takes | {"generator", "sampler"} or (case in NEEDS_TEXT and "prompt" not in base):
            continue
        if name == "UniDiffuserPipeline" and "image" in bad:
            continue  # its valid call is text to image, where diffusers ignores `image`
        if case == "output type" and "Prior" in name:
            bad = dict(output_type="pil")  # priors return embeddings: "pt" or "np"
        with count_compiles() as compiled, pytest.raises(error) as raised:
            pipe(**{**base, **bad})
        assert argument in str(raised.value), (case, str(raised.value))
        assert compiled() == 0 and not tokenized, (case, compiled(), tokenized)
        tried += 1
    assert tried >= 8, tried


ABSURD = r"""
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
import jaxgen
pixart = jaxgen.PixArtAlphaPipeline.from_pretrained(sys.argv[1])
stage_1 = jaxgen.IFPipeline.from_pretrained(sys.argv[2])
calls = [(pixart, dict(height=10**6, width=10**6, use_resolution_binning=False)),
         (pixart, dict(num_images_per_prompt=10**9)), (pixart, dict(max_sequence_length=10**6)),
         (stage_1, dict(height=10**6, width=10**6)), (stage_1, dict(num_images_per_prompt=10**9))]
img2img = jaxgen.IFImg2ImgPipeline(**stage_1.components)  # 10^9 copies of a given image
calls.append((img2img, dict(image=np.zeros((1, 16, 16, 3), np.float32), num_images_per_prompt=10**9)))
for pipe, call in calls:
    try:
        pipe("a cat", num_inference_steps=2, **call)
    except ValueError as e:
        assert "GiB" in str(e), e
        print("refused:", str(e)[:100])
    else:
        raise SystemExit(f"accepted {call}")
"""


def test_absurd_sizes_raise_under_a_memory_limit(tiny_hub, tmp_path):
    """Sizes no machine holds (a 10^6 x 10^6 image, 10^9 images, 10^9 copies of an input image, 10^6 tokens), in a process limited to 6 GiB of
    address space: a ValueError from the byte count each time, not an abort or an out-of-memory kill."""
    import os
    import subprocess
    import sys

    script = tmp_path / "absurd.py"
    script.write_text(ABSURD.replace("MEMORY_LIMIT", str(6 * 2**30)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device
    run = subprocess.run([sys.executable, str(script), str(tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"]),
                          str(tiny_hub["DeepFloyd/IF-I-XL-v1.0"])], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("refused:") == 6, run.stdout


def test_config_field_of_the_wrong_type_names_the_field_and_the_file(tiny_hub, tmp_path):
    """A config.json value of the wrong JSON type (a string for an int): a TypeError naming the field and the file,
    when the model is read, not a failure deep inside flax."""
    import json
    import shutil

    import jaxgen

    folder = tmp_path / "transformer"
    shutil.copytree(tiny_hub["PixArt-alpha/PixArt-XL-2-512x512"] / "transformer", folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = str(config["num_layers"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TypeError, match=r"config\.json: config field `num_layers` .* must be <class 'int'>, got '"):
        jaxgen.models.PixArtTransformer2DModel.from_pretrained(folder)


def test_command_line_mistakes_are_one_line_before_loading(tiny_hub, tmp_path, capsys, monkeypatch):
    """A user's mistake on the command line: exit status 2 and one line naming the option, before any model loads."""
    import jaxgen
    from jaxgen.cli import main
    from jaxgen.hub import HubError, CheckpointError

    loads = []
    monkeypatch.setattr(jaxgen.KandinskyPriorPipeline, "from_pretrained", classmethod(lambda *a, **k: loads.append(a)))
    garbage = tmp_path / "not-an-image.png"
    garbage.write_bytes(b"this is not a png")
    decoder = str(tiny_hub["kandinsky-community/kandinsky-2-1"])
    stage_1 = str(tiny_hub["DeepFloyd/IF-I-XL-v1.0"])
    out = ["--out", str(tmp_path / "x.png")]
    for argv, named in (
        (["generate", "a cat", "--model", decoder, "--image", str(garbage), *out], "--image"),
        (["generate", "a cat", "--model", decoder, "--image", str(tmp_path / "missing.png"), *out], "--image"),
        (["generate", "a cat", "--model", decoder, "--mask", str(garbage), *out], "--mask"),
        (["generate", "a cat", "--model", stage_1, "--image", str(garbage), *out], "--image"),
        (["generate", "a cat", "--model", str(tmp_path / "no-such-model"), *out], "no-such-model"),
        (["batch", "--model", decoder, "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "b")], "none.txt"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)
    assert not loads
    # a combined pipeline finds its decoder before it loads the prior
    with pytest.raises((HubError, CheckpointError, FileNotFoundError)):
        jaxgen.KandinskyCombinedPipeline.from_pretrained(tmp_path / "no-decoder", prior=decoder)
    assert not loads
