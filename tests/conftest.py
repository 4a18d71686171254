"""Shared fixtures: keep wove's process-wide configuration from leaking between tests."""

import pytest

import wove._config


@pytest.fixture(autouse=True)
def _fresh_wove_config():
    wove._config.reset()
    yield
    wove._config.reset()
