"""Shared fixtures: keep wove's process-wide configuration from leaking between tests; ``other_user``."""

import pytest
from users import other_user  # noqa: F401  (fixture: a throwaway second Unix user, see users.py)

import wove._config


@pytest.fixture(autouse=True)
def _fresh_wove_config():
    wove._config.reset()
    yield
    wove._config.reset()
