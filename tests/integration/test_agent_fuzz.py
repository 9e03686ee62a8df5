"""Stateful fuzzing of one real agent process (see agent_fuzz.py for what is checked).

``make test`` runs a fixed seed for a few hundred steps; ``make fuzz`` runs long with
``FUZZ_STEPS`` / ``FUZZ_SEED`` (a failure prints its seed and the last steps).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_fuzz import fuzz_agent, seed_from_env
from harness import require_tool

pytestmark = pytest.mark.openssh

SHORT_SEED = 15
SHORT_STEPS = 400


def test_real_agent_survives_stateful_fuzzing(tmp_path: Path) -> None:
    require_tool("ssh-keygen")  # the agent's file store reads ~/.ssh keys OpenSSH-style
    seed = seed_from_env(SHORT_SEED)
    steps = int(os.environ.get("SECRETIVEX_FUZZ_STEPS", SHORT_STEPS))
    print(f"\nagent fuzz: seed={seed} steps={steps}")
    counts = fuzz_agent(tmp_path, seed, steps)
    print(f"agent fuzz: {dict(sorted(counts.items()))}")
    # The run exercised what it claims to (the seeded mix reaches every kind of step).
    assert counts["signatures_verified"] >= steps // 10
    assert counts["hostile_refused"] >= steps // 30
    assert counts["destination_signatures_verified"] > 0
    assert counts["confirmed_signatures_verified"] > 0
    for op in ("op_add", "op_lock", "op_unlock", "op_session_bind", "op_bad_frame"):
        assert counts[op] > 0, (op, counts)
