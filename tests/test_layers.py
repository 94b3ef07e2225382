"""The house's rules (docs/architecture.md, "Layers"), read from the source itself.

Imports point down the layers only, `compositor` stays pure, and every use of aiortc's and
aioice's private API is in `mcu/rtc` (where tests/test_aiortc_internals.py covers it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import aioice
import aiortc
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mcu", "signaling", "compositor", "client")

#: Of the project's own code, what each part may import (prefixes of dotted names).
ALLOWED = {
    "compositor": ("compositor",),
    "signaling": ("signaling",),
    "mcu.rtc": ("mcu.rtc", "mcu.logs"),
    "mcu.media": ("mcu.media", "mcu.rtc", "mcu.logs", "compositor", "signaling"),
    "mcu.rooms": ("mcu.rooms", "mcu.media", "mcu.rtc", "mcu.config", "mcu.logs", "compositor", "signaling"),
    "mcu": ("mcu.config", "mcu.logs"),
    "mcu.server": ("mcu", "compositor", "signaling"),
    # The server's settings, read by the rooms: which tiers exist, ICE servers, limits.
    "mcu.config": ("mcu.config", "mcu.media", "signaling"),
    "mcu.logs": ("mcu.logs",),
    "client": ("client", "signaling", "compositor", "mcu.rtc"),
}
#: What compositor may import besides the standard library: Pillow and fontTools draw names in
#: any script (compositor/text.py, compositor/fonts.py), which OpenCV's Hershey font cannot.
COMPOSITOR_THIRD_PARTY = {"numpy", "cv2", "av", "PIL", "fontTools"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> list[str]:
    """Every module `path` imports (relative imports resolved), at any depth of the file."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def part_of(module: str) -> str:
    return max((part for part in ALLOWED if module == part or module.startswith(part + ".")), key=len)


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def test_imports_point_down_the_layers() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        allowed = ALLOWED[part_of(module)]
        for name in imports(path):
            # `from mcu import logs` names the module mcu.logs; `from mcu.rtc.x import Y`, a name in it.
            if ours(name) and (name in known or name.rsplit(".", 1)[0] in known):
                target = name if name in known else name.rsplit(".", 1)[0]
                if target != "mcu" and not any(target == a or target.startswith(a + ".") for a in allowed):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_compositor_is_pure() -> None:
    """numpy, OpenCV, PyAV, Pillow and fontTools only: no asyncio, no network, nothing of the server."""
    for module, path in modules().items():
        if part_of(module) != "compositor":
            continue
        for name in imports(path):
            top = name.split(".")[0]
            if top and top != "compositor" and top not in sys.stdlib_module_names:
                assert top in COMPOSITOR_THIRD_PARTY, f"{module} imports {name}"
            assert top not in {"asyncio", "socket", "aiohttp", "aiortc"}, f"{module} imports {name}"


def private_names(package: object) -> set[str]:
    """The private attributes a library defines on its objects (`self._x = ...`, `def _x`)."""
    names = set()
    for path in Path(package.__file__).parent.rglob("*.py"):  # type: ignore[attr-defined]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
    return {name for name in names if not name.startswith("__") or not name.endswith("__")}


def own_names() -> set[str]:
    names = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if not (isinstance(node.value, ast.Name) and node.value.id not in {"self", "cls"}):
                    names.add(node.attr)
    return names


def test_aiortc_and_aioice_internals_are_used_in_mcu_rtc_only() -> None:
    """An attribute aiortc or aioice keeps private, read or written on one of their objects, or a
    name-mangled one (`_RTCRtpSender__x`), is found outside `mcu/rtc` nowhere."""
    theirs = (private_names(aiortc) | private_names(aioice)) - own_names()
    found = []
    for module, path in modules().items():
        if part_of(module) == "mcu.rtc":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            attr = None
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                attr = node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "setattr", "hasattr"}
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                attr = str(node.args[1].value)
            if attr and attr.startswith("_") and (attr in theirs or attr.startswith(("_RTC", "_Rtc"))):
                found.append(f"{module}:{node.lineno} {attr}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", [aiortc, aioice])
def test_the_private_name_scan_finds_what_it_must(package: object) -> None:
    """The scan above is not empty-handed: it knows the internals mcu/rtc relies on."""
    names = private_names(package)
    expected = {"_send_rtcp", "_run_rtp"} if package is aiortc else {"_protocols"}
    assert expected <= names
