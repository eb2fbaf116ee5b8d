"""Shared test fixtures: paths to the real data in ../shared/data."""

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """Root of the real data shipped beside the repository (`../shared/data`)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} not found')
  return SHARED_DATA
