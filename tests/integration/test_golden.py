"""No change goes unseen: the demo's exposition at a fixed moment equals the committed golden file
(tests/fixtures/demo-exposition.txt), byte for byte once run ids, poll times and lead times are
masked. A change that is meant to move a figure regenerates it (`python tests/golden.py --write`)
in a commit of its own that says why each figure moved."""

from __future__ import annotations

import difflib

from golden import GOLDEN, demo_exposition


def test_the_demo_exposition_equals_the_golden_file(tmp_path):
    got = demo_exposition(tmp_path)
    want = GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now", n=1))
    assert got == want, f"the exposition moved (regenerate with python tests/golden.py --write if meant):\n{diff[:6000]}"
