"""Key map of diffusers' ``IFSafetyChecker`` (jaxgen/models/safety_checker.py): a CLIP vision tower with
projection under ``vision_model`` beside the ``p_head`` / ``w_head`` linear heads, named as the
checkpoint, so the CLIP rules of ``convert.clip`` fill it."""

from convert.clip import ignored_keys, key_rule

__all__ = ["key_rule", "ignored_keys"]
