"""Generate the MONAI bundles ``bundles/<arch>_<attention>/`` from the one template in ``kvmonai/bundle/template``.

Template files are copied with ``${name}`` placeholders filled in (JSON placeholders sit inside strings only, so the
template stays valid JSON); the README's recipe prose comes from :mod:`kvmonai.bundle.readme`.
``kvmonai bundles`` writes all bundles (the 14 pairs of the five transformers, the CNN reference and the
timm backbones' pairs) with :func:`write_bundles`; :func:`check_bundles` reports every difference between a bundle
folder and what the generator makes (the tests fail on any). Both walk the bundles the same way (:func:`_sync`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvmonai.bundle.readme import COMPLEXITY_TABLES, performance_text, recipe_values
from kvmonai.paths import BUNDLE_TEMPLATE, bundle_name
from kvmonai.utils import write_text_atomic

__all__ = [
    "COMPLEXITY_TABLES",
    "TEMPLATE_DIR",
    "check_bundles",
    "recipe_values",
    "render_bundle",
    "write_bundles",
]

TEMPLATE_DIR = BUNDLE_TEMPLATE
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
#: files of a generated bundle that the generator owns (training outputs such as models/ and runs/ are not)
_GENERATED_DIRS = ("configs", "docs")


def _fill(text: str, values: dict[str, str], source: Path) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template {source} uses ${{{key}}}, which the generator does not define.")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def render_bundle(arch: str, attention: str, measured_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The files of one bundle: ``relative path -> text``.

    Args:
        arch: architecture name.
        attention: attention variant.
        measured_dir: folder with measurement files (:data:`COMPLEXITY_TABLES`) for the README's Performance section.

    Raises:
        ValueError: for an unknown pair.
    """
    from kvmonai.networks import ATTENTION_REGISTRY, lookup

    info = lookup(arch)
    if attention not in info.attentions:
        raise ValueError(f"no bundle for {arch!r} with {attention!r}; attentions: {info.attentions}.")
    att = ATTENTION_REGISTRY[attention]
    values = {
        "arch": arch,
        "attention": attention,
        "bundle_name": bundle_name(arch, attention),
        "arch_title": info.title,
        "arch_reference": info.reference,
        "arch_reference_short": info.short,
        "attention_title": att.title,
        "attention_description": att.description,
        "performance": performance_text(arch, attention, Path(measured_dir) if measured_dir else None),
        "channels_last": "True" if info.channels_last else "False",
        "requires_note": _requires_note(info.requires),
        **recipe_values(TEMPLATE_DIR / "configs" / "train.json", TEMPLATE_DIR / "configs" / "inference.json"),
    }
    files: dict[str, str] = {}
    for path in sorted(TEMPLATE_DIR.rglob("*")):
        if path.is_file():
            files[path.relative_to(TEMPLATE_DIR).as_posix()] = _fill(path.read_text(), values, path)
    if info.requires:
        files["configs/metadata.json"] = _with_packages(files["configs/metadata.json"], info.requires)
    return files


def _requires_note(requires: Mapping[str, str]) -> str:
    """The README sentence on the extra packages a network needs (empty when it needs none)."""
    if not requires:
        return ""
    names = ", ".join(f"{name} {version}" for name, version in requires.items())
    extras = ",".join(requires)
    return f" This network also needs {names} (`pip install 'kvmonai[{extras}]'`)."


def _with_packages(metadata: str, requires: Mapping[str, str]) -> str:
    """``metadata.json`` text with ``requires`` added to ``required_packages_version`` after kvmonai's entry.

    The entries are inserted as lines, so the template's layout stays as it is.

    Raises:
        ValueError: if the template has no ``"kvmonai"`` entry there, or the result is not the expected JSON.
    """
    import json

    match = re.search(r'^( *)"kvmonai": "[^"]*",\n', metadata, flags=re.MULTILINE)
    if match is None:
        raise ValueError('the metadata.json template needs a "kvmonai" line in required_packages_version.')
    lines = "".join(f'{match.group(1)}"{name}": "{version}",\n' for name, version in requires.items())
    text = metadata[: match.end()] + lines + metadata[match.end() :]
    if {k: json.loads(text)["required_packages_version"].get(k) for k in requires} != dict(requires):
        raise ValueError("the packages were not added to required_packages_version of metadata.json.")
    return text


def _sync(
    root: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    measured_dir: str | os.PathLike | None,
    write: bool,
) -> list[str]:
    """Compare the bundles of ``pairs`` under ``root`` with what the generator makes; with ``write``, also repair them.

    A file that is missing or differs is (re)written, a file of the generated folders (``configs/``, ``docs/``) that
    the template no longer has is removed; training outputs (``models/``, ``runs/``) are left alone. Without
    ``write``, nothing is touched and a bundle folder that does not exist is skipped (:func:`check_bundles` reports
    it).

    Returns:
        one line per difference found (before repairing it).
    """
    problems: list[str] = []
    for arch, attention in pairs:
        folder = Path(root) / bundle_name(arch, attention)
        if not write and not folder.is_dir():
            continue
        files = render_bundle(arch, attention, measured_dir)
        for rel, text in files.items():
            target = folder / rel
            if target.is_file() and target.read_text() == text:
                continue
            problems.append(f"{folder.name}/{rel}: {'differs from the template' if target.is_file() else 'missing'}")
            if write:
                write_text_atomic(target, text)
        for sub in _GENERATED_DIRS:
            for extra in sorted((folder / sub).rglob("*")) if (folder / sub).is_dir() else []:
                rel = extra.relative_to(folder).as_posix()
                if extra.is_file() and rel not in files:
                    problems.append(f"{folder.name}/{rel}: not in the template")
                    if write:
                        extra.unlink()
    return problems


def _all_pairs() -> list[tuple[str, str]]:
    from kvmonai.networks import pairs

    return list(pairs(references=True, extra=True))


def write_bundles(
    root: str | os.PathLike,
    pairs: Sequence[tuple[str, str]] | None = None,
    measured_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write (or refresh) bundles under ``root``; files the template no longer has are removed from the generated
    folders (``configs/``, ``docs/``), training outputs (``models/``, ``runs/``) are left alone.

    Args:
        root: the bundles folder.
        pairs: ``(arch, attention)`` pairs (default: every bundle).
        measured_dir: folder with measurement files for the README's Performance section.

    Returns:
        the bundle folders.
    """
    pairs = list(pairs or _all_pairs())
    _sync(root, pairs, measured_dir, write=True)
    return [Path(root) / bundle_name(arch, attention) for arch, attention in pairs]


def check_bundles(root: str | os.PathLike, measured_dir: str | os.PathLike | None = None) -> list[str]:
    """Differences between the bundles under ``root`` and what the generator makes (empty when identical)."""
    pairs = _all_pairs()
    expected = {bundle_name(a, t) for a, t in pairs}
    present = {p.name for p in Path(root).iterdir() if p.is_dir()} if Path(root).is_dir() else set()
    problems = [f"{name}: bundle folder missing" for name in sorted(expected - present)]
    problems += [f"{name}: not a generated bundle" for name in sorted(present - expected)]
    return problems + _sync(root, pairs, measured_dir, write=False)
