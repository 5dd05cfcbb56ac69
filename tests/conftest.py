"""Fixtures every test area may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a certificate for every role (controller, agent, gateway, admin, operator,
    viewer), made once for the session."""
    return make_pki(tmp_path_factory.mktemp("pki"))
