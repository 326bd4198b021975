"""The layer rules and the map of the house (docs/architecture.md) checked against the tree.

The import contracts live in ``.importlinter`` and are checked by import-linter; these tests run
it as a user would, show that it catches a deliberate violation, and keep the written map and the
folder tree in step.
"""
import ast
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / '.importlinter'
ARCHITECTURE = ROOT / 'docs' / 'architecture.md'
TRAINING = ROOT / 'training' / 'mspr_training'
# Where the Python packages of the repo live: each folder holding an __init__.py below them is a
# room of the house and must have its paragraph in the map.
PACKAGE_ROOTS = (ROOT / 'mspr_ros', TRAINING)
# Trees whose modules the "long module" rule covers.
SOURCE_TREES = ('mspr_ros', 'training', 'benchmarks', 'test', 'tools', 'launch')
LONG_MODULE_LINES = 400


def _lint_imports(cwd, extra_env=None):
    """Run import-linter on the repo's contracts from ``cwd``; return (exit code, report)."""
    env = dict(os.environ, **(extra_env or {}))
    # --no-cache: nothing is written into the checkout.
    command = [sys.executable, '-c',
               'from importlinter.cli import lint_imports_command; lint_imports_command()',
               '--no-cache', '--no-logo', str(CONTRACTS)]
    out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _contract_names():
    return re.findall(r'^name = (.+)$', CONTRACTS.read_text(), flags=re.MULTILINE)


def test_import_contracts_hold():
    code, report = _lint_imports(ROOT)
    assert code == 0, report
    # Every contract of the file was checked and kept (none silently skipped).
    names = _contract_names()
    assert len(names) >= 5
    for name in names:
        assert re.search(re.escape(name) + r'\s+KEPT', report), f'{name!r} not kept:\n{report}'


SHELL_CONTRACT = 'Only the ROS shell imports the ROS shell'
PACKAGE_FOLDERS = {'mspr_ros': ROOT / 'mspr_ros', 'mspr_training': TRAINING}
# A module dropped into a copy of one package, the import it makes, and the contracts it breaks.
VIOLATIONS = {
    'core_imports_rclpy': ('mspr_ros', 'geometry/ros_leak.py', 'import rclpy',
                           {'The core never imports rclpy or ROS messages'}),
    # A new top-level module, named in no layer: only the shell contract guards it.
    'core_imports_shell': ('mspr_ros', 'shell_leak.py', 'from mspr_ros.ros import node',
                           {SHELL_CONTRACT}),
    'geometry_imports_model': ('mspr_ros', 'geometry/layer_leak.py',
                               'from mspr_ros.model import config', {'Layers of the core'}),
    # A leaf of mspr_training, so that no chain back into the core muddles the layers.
    'core_imports_training': ('mspr_ros', 'training_leak.py', 'import mspr_training.plain_json',
                              {'mspr_ros never imports mspr_training'}),
    'training_imports_shell': ('mspr_training', 'bags/shell_leak.py',
                               'from mspr_ros.ros import params',
                               {SHELL_CONTRACT,
                                'mspr_training never imports the ROS shell, directly or not'}),
    'reader_imports_bags': ('mspr_training', 'data/bags_leak.py',
                            'from mspr_training.bags import writer',
                            {'Dataset readers (mspr_training.data) import no other room of '
                             'mspr_training'}),
}


@pytest.mark.parametrize('package, relative_path, source, broken', list(VIOLATIONS.values()),
                         ids=list(VIOLATIONS))
def test_contracts_fail_on_a_deliberate_violation(tmp_path, package, relative_path, source,
                                                  broken):
    assert broken <= set(_contract_names())  # the case names real contracts
    # The violation goes into a copy of the package found first on the path, so the checkout
    # itself never holds the offending module, even if the test is interrupted.
    copy = tmp_path / package
    shutil.copytree(PACKAGE_FOLDERS[package], copy, ignore=shutil.ignore_patterns('__pycache__'))
    leak = copy / relative_path
    leak.write_text(f'"""Deliberate layer violation for test_architecture."""\n{source}\n')
    module = f'{package}.' + relative_path[:-len('.py')].replace('/', '.')

    code, report = _lint_imports(tmp_path, {'PYTHONPATH': str(tmp_path)})

    assert code != 0, report
    assert module in report, f'the report does not name {module}:\n{report}'
    # Exactly the expected contracts break; every other one is still kept.
    for name in _contract_names():
        state = 'BROKEN' if name in broken else 'KEPT'
        found = re.search(re.escape(name) + r'\s+' + state, report)
        assert found, f'{name} not {state}:\n{report}'
    assert not (PACKAGE_FOLDERS[package] / relative_path).exists()


def test_importing_every_core_module_loads_neither_ros_nor_training():
    # import-linter reads import statements; this catches what it cannot see (importlib calls,
    # lazy exports in mspr_ros/__init__.py) by importing every core module for real.
    # The walk skips the shell without importing it (pkgutil.walk_packages would import it).
    code = (
        'import importlib, pkgutil, sys\n'
        'import mspr_ros\n'
        'names = []\n'
        'def walk(package):\n'
        '    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):\n'
        '        if info.name == "mspr_ros.ros":\n'
        '            continue\n'
        '        names.append(info.name)\n'
        '        module = importlib.import_module(info.name)\n'
        '        if info.ispkg:\n'
        '            walk(module)\n'
        'walk(mspr_ros)\n'
        'for name in mspr_ros.__all__:\n'
        '    getattr(mspr_ros, name)\n'
        'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "mspr_training")\n'
        '             or m.endswith((".msg", ".srv"))\n'
        '             or (m + ".").startswith("mspr_ros.ros."))\n'
        'assert not bad, bad\n'
        'print(len(names))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) >= 20  # the walk really found the core's modules


def _mapped_folders():
    """Return the folders the map gives a paragraph to: headings like ### `mspr_ros/model/`."""
    text = ARCHITECTURE.read_text()
    return re.findall(r'^#{2,4} `([^`]+)/`', text, flags=re.MULTILINE)


def _ignored_by_git(paths):
    out = subprocess.run(['git', 'check-ignore', *map(str, paths)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    return {Path(line).name for line in out.stdout.splitlines()}


def _package_folders():
    folders = set()
    for root in PACKAGE_ROOTS:
        for init in root.rglob('__init__.py'):
            if '__pycache__' not in init.parts and not init.parent.name.endswith('.egg-info'):
                folders.add(init.parent.relative_to(ROOT).as_posix())
    return folders


def _top_level_folders():
    candidates = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith('.')]
    ignored = _ignored_by_git(candidates) if candidates else set()
    return {p.name for p in candidates if p.name not in ignored}


def test_architecture_map_matches_the_tree():
    mapped = _mapped_folders()
    assert len(mapped) == len(set(mapped)), 'a folder has two paragraphs'
    missing = [folder for folder in mapped if not (ROOT / folder).is_dir()]
    assert not missing, f'docs/architecture.md names folders that do not exist: {missing}'
    unmapped = sorted((_package_folders() | _top_level_folders()) - set(mapped))
    assert not unmapped, f'folders without a paragraph in docs/architecture.md: {unmapped}'


def test_long_modules_say_why():
    text = ARCHITECTURE.read_text()
    section = text.split('## Long modules', 1)
    assert len(section) == 2, 'docs/architecture.md has no "## Long modules" section'
    # The path that opens a bullet is the module its sentence explains.
    explained = set(re.findall(r'^- `([^`]+\.py)`', section[1].split('\n## ', 1)[0],
                               flags=re.MULTILINE))
    long_modules = []
    for tree in SOURCE_TREES:
        for path in (ROOT / tree).rglob('*.py'):
            if any(part in ('__pycache__', 'build') or part.endswith('.egg-info')
                   for part in path.parts):
                continue
            with path.open(encoding='utf-8') as handle:
                if sum(1 for _ in handle) > LONG_MODULE_LINES:
                    long_modules.append(path.relative_to(ROOT).as_posix())
    unexplained = sorted(set(long_modules) - explained)
    assert not unexplained, (f'modules over {LONG_MODULE_LINES} lines with no sentence under '
                             f'"## Long modules" in docs/architecture.md: {unexplained}')
    stale = sorted(p for p in explained if not (ROOT / p).is_file())
    assert not stale, f'docs/architecture.md explains modules that do not exist: {stale}'


def _test_module_names():
    return {path.stem for path in (ROOT / 'test').glob('*.py')}


def test_benchmarks_never_import_from_tests():
    # Benchmarks run where the test folder may not be on the path; what they share with the tests
    # lives in mspr_training. Both import statements and importlib-by-path loads are looked for.
    test_modules = _test_module_names()
    offenders = {}
    for path in (ROOT / 'benchmarks').rglob('*.py'):
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [Path(node.value).stem] if node.value.endswith('.py') else []
            else:
                continue
            bad = [name for name in names if name.split('.')[0] in test_modules]
            if bad:
                offenders.setdefault(path.relative_to(ROOT).as_posix(), []).extend(bad)
    assert not offenders, f'benchmarks importing from test/: {offenders}'


# Citations such as "docs/paper.md section 4.1", "paper.md 2, 3.1" or "sections 1 and 3".
PAPER_CITATION = re.compile(
    r'paper\.md,?\s+(?:sections?\s+)?(\d+(?:\.\d+)?(?:(?:,\s*|\s+and\s+)\d+(?:\.\d+)?)*)')
# Repo-relative only: not the docs/ folder of some URL or other project.
DOC_REFERENCE = re.compile(r'(?<![\w/.-])docs/[\w./-]*\w')
CITING_TREES = ('mspr_ros', 'training', 'benchmarks', 'test', 'launch', 'config', 'tools', 'docs')
CITING_SUFFIXES = ('.py', '.yaml', '.md', '.xml', '.sh', '.cfg', '.txt')


def _citing_files():
    files = [ROOT / 'README.md', ROOT / 'Makefile']
    for tree in CITING_TREES:
        files.extend(p for p in (ROOT / tree).rglob('*')
                     if p.suffix in CITING_SUFFIXES and p.is_file()
                     and not any(part in ('__pycache__', 'build') or part.endswith('.egg-info')
                                 for part in p.parts))
    return files


def test_cited_docs_and_paper_sections_exist():
    sections = set(re.findall(r'^#{2,3} (\d+(?:\.\d+)?)\.? ',
                              (ROOT / 'docs' / 'paper.md').read_text(), flags=re.MULTILINE))
    assert {'1.1', '2', '3.1', '4.1', '5.1'} <= sections  # the parse itself works
    missing_files, missing_sections = set(), set()
    for path in _citing_files():
        text = path.read_text(encoding='utf-8', errors='replace')
        where = path.relative_to(ROOT).as_posix()
        for reference in DOC_REFERENCE.findall(text):
            if not (ROOT / reference).exists():
                missing_files.add(f'{where}: {reference}')
        for numbers in PAPER_CITATION.findall(text):
            for number in re.findall(r'\d+(?:\.\d+)?', numbers):
                if number not in sections:
                    missing_sections.add(f'{where}: section {number}')
    assert not missing_files, f'citations of files that are not in docs/: {sorted(missing_files)}'
    assert not missing_sections, f'docs/paper.md has no such section: {sorted(missing_sections)}'
