"""Where kvmonai's files are and what they are called: the bundles folder, bundle names and run-folder names.

The one home of these names; everything that finds a bundle or names a run folder goes through here. The bundles
folder honours ``$KVMONAI_BUNDLES``, so kvmonai also works when installed without a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUNDLES_ENV", "BUNDLE_TEMPLATE", "bundle_name", "bundles_dir", "find_bundle", "run_name"]

#: environment variable naming the folder of kvmonai bundles
BUNDLES_ENV = "KVMONAI_BUNDLES"
#: the bundle template the bundles are generated from (``kvmonai/bundle/template``, shipped with the package)
BUNDLE_TEMPLATE = Path(__file__).resolve().parent / "bundle" / "template"
_CHECKOUT_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundles_dir() -> Path:
    """The folder of kvmonai bundles: ``$KVMONAI_BUNDLES`` when set, else the checkout's ``bundles/``.

    Raises:
        FileNotFoundError: when the variable is unset and kvmonai runs without a checkout (installed as a package),
            so there is no ``bundles/`` beside it.
    """
    env = os.environ.get(BUNDLES_ENV)
    if env:
        return Path(env)
    if _CHECKOUT_BUNDLES.is_dir():
        return _CHECKOUT_BUNDLES
    raise FileNotFoundError(
        f"no bundles folder: kvmonai runs without a checkout ({_CHECKOUT_BUNDLES} does not exist). Set "
        f"{BUNDLES_ENV} to a folder of kvmonai bundles, e.g. the bundles/ of a kvmonai clone."
    )


def find_bundle(name_or_folder: str | os.PathLike, config: str = "inference.json") -> Path:
    """A bundle given as a folder, or by name (``setr_kv``) in :func:`bundles_dir`.

    Args:
        name_or_folder: a bundle folder, or the name of one under the bundles folder.
        config: the config file the bundle must hold (``configs/<config>``).

    Raises:
        FileNotFoundError: when it is neither, naming where it was looked for.
    """
    path = Path(name_or_folder)
    if (path / "configs" / config).is_file() or (path.is_dir() and len(path.parts) > 1):
        return path  # a folder given as a path: the caller says what it lacks
    try:
        named = bundles_dir() / path
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} is not a bundle folder (no configs/{config}); {e}") from None
    if (named / "configs" / config).is_file():
        return named
    known = sorted(f.parents[1].name for f in named.parent.glob(f"*/configs/{config}"))
    names = ", ".join(known) if known else "none"
    raise FileNotFoundError(
        f"{path} is neither a bundle folder nor a bundle name in {named.parent} (no {named / 'configs' / config}); "
        f"give a bundle folder, or set {BUNDLES_ENV} to the folder that holds it. Known bundles: {names}."
    )


def bundle_name(arch: str, attention: str) -> str:
    """Folder name of a bundle, e.g. ``setr_kv``.

    Args:
        arch: architecture name (``setr``).
        attention: attention variant (``kv``).
    """
    return f"{arch}_{attention}"


def run_name(arch: str, attention: str, fold: int, seed: int) -> str:
    """Name of one training's run folder, e.g. ``setr_kv_fold0_seed1`` (the bundles' ``output_dir`` and the study's).

    Args:
        arch: architecture name.
        attention: attention variant.
        fold: validation fold.
        seed: random seed.
    """
    return f"{bundle_name(arch, attention)}_fold{fold}_seed{seed}"
