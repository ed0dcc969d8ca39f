"""Found activations where users configure models by name: transformers and timm.

``grafs.register("my_act", formula)`` (see :mod:`grafs.integrations.registry`); one small
module per library says where its activation registry lives.
"""
from grafs.integrations.registry import RegisteredActivation, register, registered, unregister

__all__ = ["register", "unregister", "registered", "RegisteredActivation"]
