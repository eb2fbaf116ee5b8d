"""PRID-2011 on an official-shaped layout: 385 cam_a and 749 cam_b person folders, tiny images.

Expectations from the dataset's documentation (only person_0001..0200 are seen by both cameras) and the
RRS/DRSA-lineage threshold (>= 27 frames in both cameras), written out by hand below.
"""

import io
import json
import os
import pathlib

import pytest
from PIL import Image

from configs import prid as prid_config
from lstrl_jax.data.datasets import load_dataset, prid, reader_options
from lstrl_jax.data.index import DatasetError

# Frames per camera of person_0001..0200: 30 each, except these (26 < 27 frames in cam_a, 5 in cam_b).
SHORT_IN_A = (3, 17, 45, 46, 80, 99, 120, 150, 151, 199, 200)
SHORT_IN_B = (5, 18, 60, 61, 77, 101, 130, 160, 170, 181, 190)
KEPT = [f'person_{p:04d}' for p in range(1, 201) if p not in SHORT_IN_A + SHORT_IN_B]  # 178 persons


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  """cam_a person_0001..0385, cam_b person_0001..0749 (0201+ are other people: 40 frames, would qualify)."""
  root = tmp_path_factory.mktemp('prid')
  cams = root / 'prid_2011' / 'multi_shot'
  image = root / 'image.png'
  buffer = io.BytesIO()
  Image.new('RGB', (2, 4), (90, 30, 200)).save(buffer, format='PNG')
  image.write_bytes(buffer.getvalue())

  def person(cam, number, frames):
    folder = cams / cam / f'person_{number:04d}'
    folder.mkdir(parents=True)
    for i in range(1, frames + 1):
      os.link(image, folder / f'{i:04d}.png')

  for number in range(1, 386):
    person('cam_a', number, 26 if number in SHORT_IN_A else 30 if number <= 200 else 40)
  for number in range(1, 750):
    person('cam_b', number, 5 if number in SHORT_IN_B else 30 if number <= 200 else 40 if number <= 385 else 2)
  return root


def _from_config(config):
  return load_dataset(config.dataset, config.data_dir, split=config.split, **reader_options(config))


def _persons(ds, tracklets):
  return sorted({pathlib.Path(t.frames[0]).parent.name for t in tracklets})


def test_official_layout_keeps_the_178_of_the_200_shared_persons(official):
  multi_shot = official / 'prid_2011' / 'multi_shot'
  assert len(os.listdir(multi_shot / 'cam_a')) == 385 and len(os.listdir(multi_shot / 'cam_b')) == 749
  assert prid.shared_persons(multi_shot) == [f'person_{p:04d}' for p in range(1, 201)]
  assert len(KEPT) == 178
  for split in range(10):
    ds = load_dataset('prid', official, split=split)
    test = _persons(ds, [ds.test[i] for i in ds.query])
    train = _persons(ds, ds.train)
    assert len(test) == 89 and len(train) == 89 and not set(test) & set(train)
    assert sorted(test + train) == KEPT  # never person_0201+, never a short tracklet
    assert max(t.pid for t in ds.test) <= 200
    assert [ds.test[i].pid for i in ds.query] == [ds.test[i].pid for i in ds.galleries['cross_camera']]


def test_min_frames_from_the_config(official):
  config = prid_config.get_config()
  assert config.prid_min_frames == prid.MIN_FRAMES == 27
  config.data_dir = str(official)
  ds = _from_config(config)
  assert len(ds.query) == 89
  config.prid_min_frames = 1  # McLaughlin et al.: all 200 shared persons
  ds = _from_config(config)
  assert len(ds.query) == 100 and len(ds.train) == 200
  assert _persons(ds, ds.train + tuple(ds.test[i] for i in ds.query)) == [
      f'person_{p:04d}' for p in range(1, 201)]
  config.prid_min_frames = 6  # keeps the 11 persons with 26 frames in cam_a, not those with 5 in cam_b
  assert len(_from_config(config).query) == (200 - len(SHORT_IN_B)) // 2
  config.prid_min_frames = 0
  with pytest.raises(DatasetError, match=r'^prid_min_frames=0: expected a positive integer'):
    _from_config(config)


def test_split_file_person_above_0200_is_refused(official, tmp_path):
  root = tmp_path / 'prid'
  root.mkdir()
  (root / 'prid_2011').symlink_to(official / 'prid_2011')
  (root / 'splits_prid2011.json').write_text(json.dumps([{'train': ['person_0001'], 'test': ['person_0211']}]))
  with pytest.raises(DatasetError, match="person 'person_0211' is not one of person_0001..0200 in both cam_a"):
    load_dataset('prid', root)
  (root / 'splits_prid2011.json').write_text(json.dumps([{'train': ['person_0001'], 'test': ['person_0003']}]))
  ds = load_dataset('prid', root)  # the split file's persons are used as is, short tracklets included
  assert [ds.test[i].pid for i in ds.query] == [3] and len(ds.test[0].frames) == 26
