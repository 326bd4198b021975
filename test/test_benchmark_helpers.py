"""The helpers the benchmarks and the node tests share, and the benchmarks' import rule.

Benchmarks import nothing from ``test/``; what both need lives in ``mspr_training``
(``node_process``, ``ros_client``, ``argument_types``, ``plain_json``).
"""
import argparse
import ast
from dataclasses import dataclass
import enum
import json
import math
from pathlib import Path
import subprocess
import sys
import threading
from typing import Iterable, List, Set

import numpy as np
import pytest
import yaml

from mspr_training.argument_types import parse_size
from mspr_training.node_process import node_command, param_args
from mspr_training.plain_json import jsonable
from mspr_training.ros_client import Inbox

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / 'benchmarks'
TEST_MODULES = {path.stem for path in (REPO / 'test').glob('*.py')}


def imported_modules(source: str) -> Set[str]:
    """Return the top-level names of the modules ``source`` imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def imports_from_test(source: str) -> List[str]:
    """Return what ``source`` may take from ``test/``: its modules, or modules found by path."""
    found = sorted(imported_modules(source) & TEST_MODULES)
    found += [trick for trick in ('spec_from_file_location', 'sys.path.insert',
                                  'sys.path.append') if trick in source]
    return found


def benchmark_sources() -> Iterable[Path]:
    """Return every Python file of the benchmarks."""
    return sorted(BENCHMARKS.rglob('*.py'))


def test_benchmarks_import_nothing_from_test():
    # The check itself finds both ways the benchmarks used to reach into test/.
    assert imports_from_test('from ros_harness import RosClient\n') == ['ros_harness']
    assert imports_from_test("spec = importlib.util.spec_from_file_location('h', REPO / 'test')\n")
    sources = list(benchmark_sources())
    assert BENCHMARKS / 'common' / 'node_session.py' in sources
    offenders = {str(path.relative_to(REPO)): imports_from_test(path.read_text())
                 for path in sources}
    assert {path: found for path, found in offenders.items() if found} == {}


@pytest.mark.slow
def test_names_of_the_flat_common_module_still_resolve():
    """Scripts written against the old ``common.py`` keep importing its names from ``common``."""
    script = ('import common\n'
              'missing = [name for name in common._HOME if not hasattr(common, name)]\n'
              'assert not missing, missing\n'
              'from common import parse_size, save_results, NodeSession, Summary\n'
              'try:\n'
              '    common.no_such_helper\n'
              'except AttributeError:\n'
              '    print("ok")\n')
    result = subprocess.run([sys.executable, '-c', script], cwd=BENCHMARKS,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == 'ok'


def test_parse_size_reads_width_by_height_and_refuses_the_rest():
    assert parse_size('640x480') == (640, 480)
    assert parse_size('8X8') == (8, 8)
    for text, reason in (('7x8', 'too small'), ('8x7', 'too small'), ('640', 'WIDTHxHEIGHT'),
                         ('1x2x3', 'WIDTHxHEIGHT'), ('axb', 'WIDTHxHEIGHT')):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            parse_size(text)


class Colour(enum.Enum):
    RED = 'red'


@dataclass
class Row:
    name: str
    values: np.ndarray
    score: float
    colour: Colour
    path: Path


def test_jsonable_gives_strict_json():
    row = Row('a', np.array([1.5, np.nan]), math.inf, Colour.RED, Path('/tmp/x'))
    data = jsonable({'rows': [row], 1: (np.int64(3), np.bool_(True), np.float32(0.5))})
    assert data == {'rows': [{'name': 'a', 'values': [1.5, None], 'score': None,
                              'colour': 'red', 'path': '/tmp/x'}],
                    '1': [3, True, 0.5]}
    assert type(data['1'][0]) is int and type(data['1'][1]) is bool
    json.dumps(data, allow_nan=False)


def test_parameters_reach_the_node_as_the_yaml_they_were():
    params = {'weights': "/w/it's.safetensors", 'cuda_graphs': False, 'device': 'cpu',
              'precision': 'fp16', 'rate': 2.5,
              'count': 3, 'allowed_scenes': ['atrium', "o'hara"], 'limits': [1, 2.5]}
    args = param_args(params)
    assert args[::2] == ['-p'] * len(params)
    parsed = dict(arg.split(':=', 1) for arg in args[1::2])
    assert {name: yaml.safe_load(text) for name, text in parsed.items()} == {
        **params, 'limits': [1.0, 2.5]}
    command = node_command({'device': 'cpu'}, ['--log-level', 'warn'], name='loc',
                           namespace='/robot', program=['prog'])
    assert command == ['prog', '--ros-args', '-r', '__node:=loc', '-r', '__ns:=/robot', '-p',
                       "device:='cpu'", '--log-level', 'warn']


def test_inbox_waits_for_messages_old_and_new():
    inbox = Inbox()
    assert inbox.wait_count(0, 0.0, 'nothing') == []
    inbox.add(1)
    assert inbox.wait_for(lambda msg: msg == 1, 0.0, 'an old message') == 1
    late = threading.Timer(0.05, inbox.add, args=(2,))
    late.start()
    try:
        assert inbox.wait_for(lambda msg: msg == 2, 10.0, 'a new message') == 2
        assert inbox.wait_count(2, 10.0, 'messages') == [1, 2]
    finally:
        late.cancel()
    with pytest.raises(AssertionError, match=r'waiting for 3 messages \(2 received\)'):
        inbox.wait_count(3, 0.05, 'messages')
    with pytest.raises(AssertionError, match='waiting for a third'):
        inbox.wait_for(lambda msg: msg == 3, 0.05, 'a third')
