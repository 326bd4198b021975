"""Rendered figures in Markdown: blocks between markers, results files, captions, tables.

A block is the text between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` (each on a
line of its own); ``benchmarks/figures.py`` replaces it with what the renderer of NAME makes from
the committed results files. Every table starts with a caption naming the results file, the
commit of its run (short), its date and mode, and "dirty tree" when the checkout had uncommitted
changes; a results file older than the provenance record says that its tree state was not
recorded. Only the standard library is used: rendering needs neither torch nor ROS.
"""
from dataclasses import dataclass
import json
from pathlib import Path
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / 'benchmarks' / 'results'
MARKER = re.compile(r'^<!-- (/?)figures:([A-Za-z0-9_.-]+) -->$', re.MULTILINE)
DASH = '—'
# Notes already printed in full in the file being rendered (render_blocks resets it): later
# captions of the same results file point back to the first.
_shown_notes = set()


class MarkerError(ValueError):
    """The markers of a file do not pair up, nest, or name an unknown block."""


@dataclass
class Source:
    """One results file: its name under ``benchmarks/results/``, its document, a known caveat.

    ``note`` is a caveat of this file at this commit that the file itself cannot say (e.g. its
    stamp is older than the code it ran); it is printed under every caption of the file.
    """

    name: str
    document: Dict[str, Any]
    note: Optional[str] = None

    @property
    def results(self) -> Dict[str, Any]:
        """The benchmark-specific figures."""
        return self.document.get('results') or {}

    @property
    def settings(self) -> Dict[str, Any]:
        """The settings the run recorded."""
        return self.document.get('settings') or {}

    @property
    def provenance(self) -> Dict[str, Any]:
        """The run's provenance block ({} in files written before it existed)."""
        return self.document.get('provenance') or {}

    @property
    def commit(self) -> str:
        """The full commit the run was stamped with."""
        git = self.provenance.get('git') or {}
        return git.get('commit') or self.document.get('machine', {}).get('git_commit', 'unknown')

    @property
    def dirty(self) -> Optional[bool]:
        """Whether the tree was dirty; None when the file does not say."""
        git = self.provenance.get('git')
        if git is not None:
            return git.get('dirty')
        return self.document.get('machine', {}).get('git_dirty')

    @property
    def date(self) -> str:
        """The day the run started (UTC)."""
        return str(self.document.get('machine', {}).get('date_utc', '?'))[:10]


def load_source(name: str, notes: Mapping[tuple, str] = (),
                results_dir: Path = RESULTS_DIR) -> Optional[Source]:
    """Return the results file ``name`` (None when absent), with its note from ``notes``.

    ``notes`` maps ``(file name, full commit)`` to a caveat: it applies only to that run, so a
    rerun (another commit) drops it.
    """
    path = results_dir / name
    if not path.is_file():
        return None
    document = json.loads(path.read_text(encoding='utf-8'))
    source = Source(name, document)
    source.note = dict(notes).get((name, source.commit))
    return source


def tree_state(dirty: Optional[bool]) -> str:
    """Return how a caption states the tree: dirty, clean or not recorded."""
    return {True: '**dirty tree**', False: 'clean tree'}.get(dirty, 'tree state not recorded')


def load_text(source: Source) -> str:
    """Return the 1-minute load average at the start and the end of the run."""
    start = source.document.get('machine', {}).get('load_average_start') or [None]
    end = source.document.get('load_average_end') or [None]
    return f'load {num(start[0], 2)} at the start, {num(end[0], 2)} at the end'


def cpu_text(machine: Mapping[str, Any]) -> str:
    """Return a results file's CPU and its vector extensions (files before them: not recorded)."""
    if 'cpu_extensions' not in machine:
        extensions = 'extensions not recorded'
    else:
        extensions = ' '.join(machine['cpu_extensions']) or 'no vector extensions listed'
    return f"{machine.get('cpu_model', '?')} ({extensions})"


def caption(source: Source) -> str:
    """Return the caption line of a table rendered from ``source`` (and its note, if any)."""
    threads = source.settings.get('threads')
    parts = [f"`benchmarks/results/{source.name}`", f'commit `{source.commit[:7]}`',
             source.date, f"{source.document.get('mode', '?')} mode",
             tree_state(source.dirty)]
    machine = source.document.get('machine', {})
    if 'cpu_extensions' in machine:
        # Hosts of one model name differ in their vector extensions, and so do the timings.
        parts.append(cpu_text(machine))
    if threads is not None:
        parts.append(f'{threads} threads')
    parts.append(load_text(source))
    text = '_Source: ' + ', '.join(parts) + '._'
    if source.note and source.name in _shown_notes:
        text += f'\n\n> **Note:** see the note on `{source.name}` above.'
    elif source.note:
        _shown_notes.add(source.name)
        text += f'\n\n> **Note:** {source.note}'
    return text


def missing(name: str, command: str) -> str:
    """Return the block text of a results file that does not exist yet."""
    return (f'_No results file `benchmarks/results/{name}` yet: `{command}` writes it; '
            '`make figures` then renders it here._')


def num(value: Any, digits: int = 1, unit: str = '') -> str:
    """Return ``value`` with ``digits`` decimals and ``unit``; a dash for None."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, int) and digits == 0:
        return f'{value:,}{unit}'
    return f'{value:,.{digits}f}{unit}'


def rate(value: Optional[float]) -> str:
    """Return a rate with three significant digits or more (1.32, 15.3, 137); a dash for None."""
    if value is None:
        return DASH
    return num(value, 3 if abs(value) < 10 else 1 if abs(value) < 100 else 0)


def pct(value: Optional[float], digits: int = 0) -> str:
    """Return a fraction as a percentage; a dash for None."""
    return DASH if value is None else f'{100 * value:.{digits}f} %'


def verdict(met: Optional[bool]) -> str:
    """Return 'met' / '**not met**' / a dash."""
    return DASH if met is None else ('met' if met else '**not met**')


def get(data: Any, path: str, default: Any = None) -> Any:
    """Return ``data['a']['b']`` for ``path`` 'a.b'; ``default`` where a key is missing."""
    for key in path.split('.'):
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a Markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def settings_table(rows: Sequence[Sequence[Any]]) -> str:
    """Return a two-column table of the settings that shape a figure."""
    return table(('setting', 'value'), rows)


def blocks(text: str) -> List[str]:
    """Return the block names of ``text`` in order.

    Raises:
        MarkerError: a marker without its pair, nested or repeated blocks.
    """
    names: List[str] = []
    open_name: Optional[str] = None
    for match in MARKER.finditer(text):
        closing, name = match.group(1) == '/', match.group(2)
        if not closing:
            if open_name is not None:
                raise MarkerError(f'block {name!r} opens inside block {open_name!r}')
            if name in names:
                raise MarkerError(f'block {name!r} appears twice')
            open_name = name
        elif name != open_name:
            raise MarkerError(f'closing marker of {name!r} without its opening marker')
        else:
            names.append(name)
            open_name = None
    if open_name is not None:
        raise MarkerError(f'block {open_name!r} is never closed')
    return names


def render_blocks(text: str, renderers: Mapping[str, Callable[[], str]]) -> str:
    """Return ``text`` with every block's body replaced by its renderer's Markdown.

    Raises:
        MarkerError: bad markers (see :func:`blocks`) or a block no renderer knows.
    """
    unknown = [name for name in blocks(text) if name not in renderers]
    if unknown:
        raise MarkerError(f'no renderer for blocks {unknown}; known: {sorted(renderers)}')
    _shown_notes.clear()

    def body(match: 're.Match[str]') -> str:
        name = match.group('name')
        return f"{match.group('open')}\n\n{renderers[name]().strip()}\n\n{match.group('close')}"

    pattern = re.compile(r'^(?P<open><!-- figures:(?P<name>[A-Za-z0-9_.-]+) -->)\n'
                         r'.*?^(?P<close><!-- /figures:(?P=name) -->)$',
                         re.MULTILINE | re.DOTALL)
    return pattern.sub(body, text)
