"""The kernel language reads in one direction: record -> numerics -> engine -> layers ->
combinators -> presets (kip/kernels/stax.py explains the order). A module importing a later
one (or a layer importing another layer) would make a new layer need more than one file."""

import ast
import os

KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kip", "kernels")
LEVEL = {"kernel": 0, "numerics": 1, "engine": 2, "dense": 3, "elementwise": 3, "conv": 3, "combinators": 4,
         "presets": 5, "rf": 6, "stax": 7, "__init__": 8}


def kernel_imports(module: str) -> set[str]:
    """The kip.kernels modules `module` imports at run time (not under TYPE_CHECKING)."""
    with open(os.path.join(KERNELS, f"{module}.py")) as f:
        tree = ast.parse(f.read())
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in checking and (node.module or "").startswith("kip.kernels."):
            found.add(node.module.split(".")[2])
    return found


def test_every_kernels_module_is_placed():
    assert {f[:-3] for f in os.listdir(KERNELS) if f.endswith(".py")} == set(LEVEL)


def test_kernel_modules_import_only_earlier_levels():
    for module, level in LEVEL.items():
        for imported in kernel_imports(module):
            assert LEVEL[imported] < level, f"kip/kernels/{module}.py imports {imported} (level {LEVEL[imported]} >= {level})"


def test_no_module_of_kip_is_over_500_lines():
    """A module a newcomer reads in one sitting: split by concern before it grows past 500 lines."""
    package = os.path.dirname(KERNELS)
    for folder, _, files in os.walk(package):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(folder, f)) as text:
                    assert sum(1 for _ in text) <= 500, os.path.relpath(os.path.join(folder, f), package)
