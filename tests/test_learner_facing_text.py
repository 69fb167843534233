"""What a learner reads (every notebook, the README, the benchmark notes) names no internal tool, lock file, machine
slot, planning document or numbered source file: results cells show the command a learner would type, and the
source lectures are cited by author and title."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*ROOT.glob('nbs/*.ipynb'), ROOT / 'README.md', *ROOT.glob('benchmarks/*.md')])

# each with what to write instead
SCAFFOLDING = {
    r'\bflock\b|cpu\.lock': 'the command without the lock (what a learner would type)',
    r'tools/slot|shared CPU slot': 'the command without the CPU-slot tool',
    r'DESIGN\.md': 'the fact itself, or a record in benchmarks/',
    r'\.\./shared/': 'a file in the repository (e.g. benchmarks/peer.py)',
    r'\b[Ss]eed 00[0-3]\b': "the lecture by author and title (e.g. Ishan Misra's lecture on the SSL families)",
    r'\b(other|another) sessions?\b|\bthe sessions\b': 'other jobs, or the date and device',
    r'\b[Tt]he\s+(lecture|talk|slides)\b': "the lecture by author and title (e.g. Scott Mueller's talk)",
}


@pytest.mark.parametrize('path', FILES, ids=lambda path: path.name)
def test_no_internal_scaffolding(path):
    text = path.read_text()
    found = [f'{m.group(0)!r} (write {fix})' for pattern, fix in SCAFFOLDING.items() for m in re.finditer(pattern, text)]
    assert not found, f'{path.name}: ' + '; '.join(found)


def test_the_patterns_catch_what_they_should():
    leaks = ["`flock /tmp/cpu.lock sslcourse pretrain simclr`", "as DESIGN.md says", "Seed 003's remark",
             "python ../shared/bench/anchor.py", "other sessions' jobs shared the cores", "/work/tools/slot --both",
             "the lecture's claims", "as the\nlecture says"]
    for leak in leaks:
        assert any(re.search(pattern, leak) for pattern in SCAFFOLDING), leak
    for fine in ["Ishan Misra's lecture on the SSL families", "seed 0", "the session's kernel", "seeds 0, 1 and 2"]:
        assert not any(re.search(pattern, fine) for pattern in SCAFFOLDING), fine
