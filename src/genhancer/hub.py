"""Where a model the user names lives: a local directory or a Hugging Face hub id.

One rule for every loader (encoders, VAEs, UNets, schedulers, FLUX, LLaVA, model cards):
a name that exists on disk is a directory; a name that cannot be a hub id (it starts with
``/``, ``.`` or ``~``, holds a backslash or more than one ``/``) is a path that does not
exist; anything else is a hub id, looked up in the local cache only when
``HF_HUB_OFFLINE`` is set (so an offline run fails at once instead of retrying the network).
"""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to anything but 0 / false / empty."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def looks_like_path(name: str) -> bool:
    """``name`` is meant as a filesystem path: a hub id is ``name`` or ``owner/name``."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def hub_kwargs() -> dict:
    """``from_pretrained`` keywords for a hub id: the local cache only when offline."""
    return {"local_files_only": True} if hub_offline() else {}
