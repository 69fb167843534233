"""The package's layout holds: every import, at module level or inside a function, goes down the layers (the library
never reaches an experiment or the apps), and no two modules import each other through any chain."""
import ast, importlib.util, pkgutil, sys
from pathlib import Path
import pytest
import sslcourse

PACKAGE = Path(sslcourse.__file__).parent
# top to bottom (lesson 09a_package): a module may import its own layer and the layers below it, never one above
LAYERS = list(sslcourse.PACKAGE_LAYERS.items())
# the one import that goes up, on purpose: the registry finds the methods by walking their package, lazily
DISCOVERY = {('sslcourse.train.method', 'sslcourse.methods')}


def layer_of(module: str) -> int:
    "Index in LAYERS (0 = top) of `module`: its longest matching prefix."
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != 'sslcourse' and module.startswith(prefix + '.'))]
    if not matches: raise LookupError(f'{module} is in no layer: add it to LAYERS')
    return max(matches)[1]


def package_modules() -> dict:
    "{module name: source path} of every module of the package."
    modules = {'sslcourse': PACKAGE / '__init__.py'}
    for info in pkgutil.walk_packages([str(PACKAGE)], 'sslcourse.'):
        spec = importlib.util.find_spec(info.name)
        modules[info.name] = Path(spec.origin)
    return modules


def imports_of(module: str, path: Path, known: set) -> set:
    "The package modules that `module` imports anywhere in its source (lazy imports inside functions too)."
    is_package = path.name == '__init__.py'
    parts = module.split('.') if is_package else module.split('.')[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level: base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module itself
            names = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in known else base for alias in node.names]
        else: continue
        for name in names:
            while name and name not in known: name = name.rpartition('.')[0]  # an attribute of a module
            if name and name != module: found.add(name)
    return found


def import_graph() -> dict:
    modules = package_modules()
    return {module: imports_of(module, path, set(modules)) for module, path in modules.items()}


def upward_imports(graph: dict) -> list:
    "(importer, imported) pairs where a lower layer reaches a higher one."
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if b != 'sslcourse' and layer_of(b) < layer_of(a) and (a, b) not in DISCOVERY)


def import_cycles(graph: dict) -> list:
    "Each strongly connected set of two or more modules (Tarjan): modules that import each other through some chain."
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on_stack: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on_stack.discard(w); component.append(w)
                if w == v: break
            if len(component) > 1: cycles.append(sorted(component))
    for v in graph:
        if v not in index: visit(v)
    return cycles


def test_every_module_has_a_layer():
    for module in package_modules(): layer_of(module)


def test_no_import_goes_up_a_layer():
    bad = upward_imports(import_graph())
    assert not bad, 'imports that go up a layer (the library must not reach experiments or apps): ' + \
        ', '.join(f'{a} -> {b}' for a, b in bad)


def test_no_import_cycle():
    cycles = import_cycles(import_graph())
    assert not cycles, f'modules that import each other: {cycles}'


def test_the_checks_catch_what_they_should():
    "The checks fail on a made-up graph that breaks each rule."
    graph = {'sslcourse.data': {'sslcourse.experiments.supervised'}, 'sslcourse.experiments.supervised': {'sslcourse.data'}}
    assert upward_imports(graph) == [('sslcourse.data', 'sslcourse.experiments.supervised')]
    assert import_cycles(graph) == [['sslcourse.data', 'sslcourse.experiments.supervised']]
    assert import_cycles({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # learner imports the method API relatively at module level; the registry imports its methods lazily
    assert 'sslcourse.train.method' in graph['sslcourse.train.learner']
    assert 'sslcourse.data' in graph['sslcourse.methods.contrastive.simclr'] or \
        'sslcourse.augment' in graph['sslcourse.methods.contrastive.simclr']
    assert 'sslcourse.methods.contrastive.npid' in graph['sslcourse.methods.contrastive.pirl']
