"""docs/API.md, the public Python API contract: every name it lists exists where it says, with the
parameters it gives, in that order."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[1] / "docs" / "API.md"
SECTION = re.compile(r"^## .*?:\s*(.+)$")
MODULE = re.compile(r"`(tinylm[\w.]*)`")
# The start of a signature in a code block: optional def/class, a name, its opening parenthesis.
SIGNATURE = re.compile(r"^(?P<indent>\s*)(?:def |class )?(?P<name>\w+)\(")


def parameters(text: str) -> list[str]:
    """The parameter names of `name(...)` text (a def line or a call-like line), without self/cls/*args."""
    header = text[text.index("("):text.rindex(")") + 1]
    arguments = ast.parse(f"def f{header}: pass").body[0].args
    return [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            if a.arg not in ("self", "cls")]


def contract() -> list[tuple[list[str], str | None, str, list[str]]]:
    """(modules of the section, enclosing class or None, name, parameter names) for every signature."""
    entries, modules, in_code, owner, pending = [], [], False, None, ""
    for line in API.read_text().splitlines():
        if pending:  # a signature continued from the line before
            pending += " " + line.split("#")[0].strip()
        elif (section := SECTION.match(line)) and not in_code:
            modules = MODULE.findall(section.group(1))
            continue
        elif line.startswith("```"):
            in_code, owner = not in_code, None
            continue
        elif in_code and line.startswith("class ") and line.rstrip().endswith(":"):
            owner = line.split()[1].rstrip(":")
            continue
        elif in_code and SIGNATURE.match(line):
            pending = line.split("  #")[0].rstrip()
        if pending and pending.count("(") <= pending.count(")"):
            match = SIGNATURE.match(pending)
            method = bool(match["indent"]) and owner is not None
            entries.append((modules, owner if method else None, match["name"], parameters(pending.split("->")[0])))
            pending = ""
    return entries


def find(modules: list[str], name: str):
    for module_name in modules:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"{name} is in none of {', '.join(modules)}")


def test_the_contract_lists_every_public_api_module():
    assert {module for modules, *_ in contract() for module in modules} == {
        "tinylm.tokenizer", "tinylm.nn", "tinylm.nn.functional", "tinylm.optim", "tinylm.data", "tinylm.checkpoint"}


@pytest.mark.parametrize(("modules", "owner", "name", "params"), contract(),
                         ids=[f"{owner + '.' if owner else ''}{name}" for _, owner, name, _ in contract()])
def test_each_name_exists_with_its_parameters_in_order(modules, owner, name, params):
    target = getattr(find(modules, owner), name) if owner else find(modules, name)
    signature = inspect.signature(target.__init__ if inspect.isclass(target) and name != "__init__" else target)
    got = [p for p in signature.parameters if p not in ("self", "cls")]
    assert got[:len(params)] == params, f"{name}{signature}"
