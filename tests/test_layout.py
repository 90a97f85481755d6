"""The package's layout (docs/architecture.md, "Layers"): imports run down the layers only, and no modules import each
other, directly or round a longer circle.

Every module's imports are read with ``ast`` (those inside functions too: a lazy import is still a dependency), so the
check costs no import of torch or basicsr and sees the whole package at once.
"""
import ast
import os
import os.path as osp
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from conftest import REPO_ROOT

PACKAGE = 'despike_basicsr'

#: The layers from the ground up: a module may import its own layer and those below; ``inference`` and ``training``
#: stand side by side and do not import each other. docs/architecture.md draws the same table.
LAYERS: Dict[str, Tuple[int, str]] = {
    # what every layer shares
    '': (0, 'shared'),  # the package's __init__.py: register()
    'errors': (0, 'shared'),
    'device': (0, 'shared'),
    'version': (0, 'shared'),
    'compat': (0, 'shared'),
    '_registry_scan': (0, 'shared'),
    'checkpoint': (0, 'shared'),
    'options_file': (0, 'shared'),
    # physics and file formats
    'spike': (1, 'spike'),
    # BasicSR's registries
    'archs': (2, 'registries'),
    'data': (2, 'registries'),
    'losses': (2, 'registries'),
    'metrics': (2, 'registries'),
    'models': (2, 'registries'),
    # what uses a trained network, and what trains one
    'inference': (3, 'inference'),
    'training': (3, 'training'),
    # what measures both
    'evaluation': (4, 'evaluation'),
    # BasicSR's entry files
    'train': (5, 'entries'),
    'test': (5, 'entries'),
}


def module_files(root: str) -> Dict[str, str]:
    """Dotted module name → file, for every ``.py`` under the package folder ``root``."""
    package = osp.basename(root)
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            parts = osp.relpath(osp.join(folder, name), osp.dirname(root))[:-3].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            found['.'.join(parts)] = osp.join(folder, name)
    assert package in found, f'{root} has no __init__.py'
    return found


def imported_modules(module: str, path: str, modules: Set[str]) -> Iterator[Tuple[str, int]]:
    """``(module imported, line)`` for each import of a module in ``modules`` by the file ``path``.

    ``from a.b import c`` names the module ``a.b.c`` when that is a module of the package, else ``a.b``.
    """
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    is_package = osp.basename(path) == '__init__.py'
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.')
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            for alias in node.names:
                if f'{source}.{alias.name}' in modules:
                    yield f'{source}.{alias.name}', node.lineno
                elif source in modules:
                    yield source, node.lineno


def import_graph(root: str) -> Tuple[Dict[str, str], Dict[str, Dict[str, int]]]:
    """The package's modules and, for each, the package modules it imports (with the first line that does)."""
    files = module_files(root)
    graph = {}
    for module, path in files.items():
        edges: Dict[str, int] = {}
        for target, line in imported_modules(module, path, set(files)):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return files, graph


def layer_of(module: str) -> Tuple[int, str]:
    parts = module.split('.')
    key = parts[1] if len(parts) > 1 else ''
    if key not in LAYERS:
        raise KeyError(key)
    return LAYERS[key]


def upward_imports(files: Dict[str, str], graph: Dict[str, Dict[str, int]]) -> List[str]:
    """One line for each import of a higher layer, or of the sibling layer (inference ↔ training)."""
    found = []
    for module, edges in graph.items():
        level, name = layer_of(module)
        for target, line in edges.items():
            target_level, target_name = layer_of(target)
            if target_level > level or (target_level == level and target_name != name and level != 0):
                found.append(f'{osp.relpath(files[module], REPO_ROOT)}:{line}: {module} ({name}) imports {target} '
                             f'({target_name}); imports run down the layers only')
    return found


def circles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope='module')
def package_graph():
    return import_graph(osp.join(REPO_ROOT, PACKAGE))


def test_every_module_has_a_layer(package_graph):
    files, _ = package_graph
    unplaced = sorted({m.split('.')[1] for m in files if m != PACKAGE and m.split('.')[1] not in LAYERS})
    assert not unplaced, (f'{PACKAGE}/ holds {unplaced}, which no layer names: give each a place in LAYERS here and in '
                          'docs/architecture.md')


def test_imports_run_down_the_layers(package_graph):
    files, graph = package_graph
    found = upward_imports(files, graph)
    assert not found, '\n'.join(found)


def test_no_import_circles(package_graph):
    _, graph = package_graph
    found = circles(graph)
    assert not found, '\n'.join('import circle: ' + ' -> '.join(c + [c[0]]) for c in found)


def test_the_docs_table_names_every_layer():
    with open(osp.join(REPO_ROOT, 'docs', 'architecture.md'), encoding='utf-8') as f:
        text = f.read()
    missing = [key for key in LAYERS if key and f'`{key}' not in text]
    assert not missing, f'docs/architecture.md does not name {missing}'


def _write(root, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_finds_a_circle_and_an_import_up_the_layers(tmp_path):
    """The checks above would fail on a package with a circle (relative and lazy imports too) and an upward import."""
    root = tmp_path / PACKAGE
    _write(root, '__init__.py', '')
    _write(root, 'errors.py', '')
    _write(root, 'spike/__init__.py', '')
    _write(root, 'spike/optics.py', 'def f():\n    from .lens_psf import g\n')
    _write(root, 'spike/lens_psf.py', 'from despike_basicsr.spike.optics import f\n')
    _write(root, 'spike/io.py', 'from despike_basicsr.inference import network\nfrom despike_basicsr import errors\n')
    _write(root, 'inference/__init__.py', '')
    _write(root, 'inference/network.py', 'import despike_basicsr.spike.io\n')
    _write(root, 'training/__init__.py', '')
    _write(root, 'training/options.py', 'from despike_basicsr.inference.network import x\n')
    files, graph = import_graph(str(root))
    assert graph[f'{PACKAGE}.spike.io'] == {f'{PACKAGE}.inference.network': 1, f'{PACKAGE}.errors': 2}
    found = upward_imports(files, graph)
    assert len(found) == 2
    assert found[0].endswith('despike_basicsr.spike.io (spike) imports despike_basicsr.inference.network (inference); '
                             'imports run down the layers only')
    expected = 'despike_basicsr.training.options (training) imports despike_basicsr.inference.network (inference)'
    assert expected in found[1]
    assert circles(graph) == [[f'{PACKAGE}.inference.network', f'{PACKAGE}.spike.io'],
                              [f'{PACKAGE}.spike.lens_psf', f'{PACKAGE}.spike.optics']]
