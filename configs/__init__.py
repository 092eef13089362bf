"""The configs shipped with omni_jax, loaded by name: `--config omni_emotion:7b,audio_alignment`.

This folder is the package `omni_jax.configs` (setup.py maps it): one module per config, each
with `get_config(arg)` returning a ConfigDict of named sections. The jobs' defaults:

    omni_emotion  the model and every job that runs it: train, eval, infer, score, data-check,
                  plan, assemble, convert-facexformer (sections model, data, train, eval, evals,
                  mesh, plan, infer, check, score, convert)
    faces         omni-jax faces          annotate   omni-jax annotate
    manifest      omni-jax manifest       synth      omni-jax synth
    convert       omni-jax convert, export, convert-retinaface

and the parts' shapes the model configs are built from: qwen2, siglip, llava_onevision, whisper,
swin, facexformer.
"""
