"""One TFDS GeneratorBasedBuilder per dataset, packing tracklets into ArrayRecord files without TensorFlow.

Each example is one tracklet of the dataset index (`lstrl_jax.data.datasets.load_dataset`), in index order:

  frames: Sequence of raw bytes, the PNG/JPEG files exactly as stored (never re-encoded; decoded by PIL at
          training time, like the folder layout).
  names:  Sequence of text, each frame's path relative to the dataset root (for error messages).
  pid, camid: int64, as in the index (training pids relabelled, test pids original).
  index:  int64, the tracklet's position in `dataset.train` / `dataset.test`.

Splits 'train' and 'test' hold `dataset.train` and `dataset.test`. Examples keep the index order
(`disable_shuffling=True`, integer keys = positions), so record i of a split is tracklet i and grain reads it
by random access (`builder.as_data_source`). The manual download dir is the dataset root in the layout a user
downloads (DESIGN.md section 3); for iLIDS-VID, PRID-2011 and the demo data the builder config 'split<k>'
selects the train/test split k. The dataset's metadata records a fingerprint of the index, so a packed copy
that no longer matches the folder index (another split, an edited protocol file) is refused.

Works with tensorflow-datasets 4.9 and no TensorFlow installed: `tfds.features.Tensor(dtype=np.object_)` stores
bytes as they are and `Text` stores strings; neither needs TF to encode or decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from lstrl_jax.data.datasets import load_dataset
from lstrl_jax.data.index import DatasetError, Tracklet, VideoReIDDataset

NUM_SPLITS = 10
PACK_COMMAND = 'python -m lstrl_jax.data.pack --config <config> --config.packed_dir=<dir>'


def index_fingerprint(dataset: VideoReIDDataset) -> str:
  """Hex digest of every tracklet's (pid, camid, frame count, first/last frame name) and the query indices."""
  def rows(tracklets: Sequence[Tracklet]) -> list:
    return [[t.pid, t.camid, len(t.frames), os.path.basename(t.frames[0]), os.path.basename(t.frames[-1])]
            for t in tracklets]
  payload = json.dumps([rows(dataset.train), rows(dataset.test), np.asarray(dataset.query).tolist()])
  return hashlib.sha256(payload.encode()).hexdigest()[:32]


class VideoReIDBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: subclasses set `name` and `READER` (the `load_dataset` name)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Tracklets with encoded frames, names, pid, camid and index position.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the dataset yourself and pass its root (the layout of DESIGN.md section 3) as the manual dir.')
  READER = ''
  # Where TFDS looks for a checksums file (there is none: nothing is downloaded). Given explicitly because
  # TFDS's own lookup for builders inside a package imports `importlib_resources`, absent from requirements.txt.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    """Features of one tracklet (see the module docstring)."""
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.READER} video ReID tracklets packed by lstrl_jax (encoded frames, unchanged).',
        features=tfds.features.FeaturesDict({
            'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            'names': tfds.features.Sequence(tfds.features.Text()),
            'pid': np.int64,
            'camid': np.int64,
            'index': np.int64,
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  @property
  def split_index(self) -> int:
    """The train/test split k selected by config 'split<k>' (0 for builders without configs)."""
    return int(self.builder_config.name.removeprefix('split')) if self.BUILDER_CONFIGS else 0

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    """Reads the index from the manual dir and returns the 'train' and 'test' example generators."""
    root = pathlib.Path(dl_manager.manual_dir)
    dataset = load_dataset(self.READER, root, split=self.split_index)
    self.info.metadata['fingerprint'] = index_fingerprint(dataset)
    return {'train': self._generate_examples(dataset.train, root),
            'test': self._generate_examples(dataset.test, root)}

  def _generate_examples(self, tracklets: Sequence[Tracklet], root: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """Yields (position, example) with every frame's bytes read as stored.

    Raises:
      DatasetError: a frame file cannot be read (the message names it).
    """
    for i, tracklet in enumerate(tracklets):
      frames = []
      for path in tracklet.frames:
        try:
          frames.append(pathlib.Path(path).read_bytes())
        except OSError as e:
          raise DatasetError(f'{path}: cannot read frame ({e.strerror}); expected a readable image file') from e
      yield i, {
          'frames': frames,
          'names': [os.path.relpath(path, root) for path in tracklet.frames],
          'pid': tracklet.pid,
          'camid': tracklet.camid,
          'index': i,
      }


def _split_configs() -> list[tfds.core.BuilderConfig]:
  return [tfds.core.BuilderConfig(name=f'split{k}', description=f'train/test split {k}') for k in range(NUM_SPLITS)]


class Mars(VideoReIDBuilder):
  """MARS (Zheng et al., ECCV 2016): bbox_train/, bbox_test/, info/ under the manual dir."""

  name = 'mars'
  READER = 'mars'


class Ilidsvid(VideoReIDBuilder):
  """iLIDS-VID (Wang et al., ECCV 2014): i-LIDS-VID/sequences/, train-test people splits/; configs split0..9."""

  name = 'ilidsvid'
  READER = 'ilidsvid'
  BUILDER_CONFIGS = _split_configs()


class Prid(VideoReIDBuilder):
  """PRID-2011 (Hirzer et al., SCIA 2011): prid_2011/multi_shot/; configs split0..9."""

  name = 'prid'
  READER = 'prid'
  BUILDER_CONFIGS = _split_configs()


class Lsvid(VideoReIDBuilder):
  """LS-VID (Li et al., ICCV 2019): list_sequence/, test/data/info_test.mat and the frame folders."""

  name = 'lsvid'
  READER = 'lsvid'


class Duke(VideoReIDBuilder):
  """DukeMTMC-VideoReID (Wu et al., CVPR 2018): train/, query/, gallery/."""

  name = 'duke'
  READER = 'duke'


class Demo(VideoReIDBuilder):
  """The generated demo dataset (`python -m lstrl_jax.data.demo`, iLIDS-VID layout); configs split0..9."""

  name = 'lstrl_demo'
  READER = 'demo'
  BUILDER_CONFIGS = _split_configs()


BUILDERS: dict[str, type[VideoReIDBuilder]] = {cls.READER: cls for cls in (Mars, Ilidsvid, Prid, Lsvid, Duke, Demo)}


def make_builder(name: str, split: int, packed_dir: str | os.PathLike) -> VideoReIDBuilder:
  """The builder of dataset `name` (a `load_dataset` name) and split under `packed_dir`.

  Raises:
    DatasetError: unknown name or split out of range.
  """
  if name not in BUILDERS:
    raise DatasetError(f'dataset {name!r}: no packed format; expected one of {", ".join(BUILDERS)}')
  cls = BUILDERS[name]
  if cls.BUILDER_CONFIGS:
    if not 0 <= split < NUM_SPLITS:
      raise DatasetError(f'dataset {name!r}: split {split} out of range; expected 0..{NUM_SPLITS - 1}')
    return cls(data_dir=os.fspath(packed_dir), config=f'split{split}', file_format='array_record')
  if split != 0:
    raise DatasetError(f'dataset {name!r}: split {split} given; expected 0 (it has one protocol)')
  return cls(data_dir=os.fspath(packed_dir), file_format='array_record')


def pack(name: str, root: str | os.PathLike, packed_dir: str | os.PathLike, split: int = 0) -> str:
  """Packs dataset `name` read from `root` into ArrayRecord files under `packed_dir` (kept if already there).

  Returns:
    The directory holding the packed split (`<packed_dir>/<name>[/split<k>]/<version>`).

  Raises:
    DatasetError: from the reader (bad root or layout) or an unreadable frame.
  """
  builder = make_builder(name, split, packed_dir)
  load_dataset(name, root, split=split)  # a bad root or layout fails here, before TFDS writes anything
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root)))
  return os.fspath(builder.data_dir)


def open_packed(dataset: VideoReIDDataset, packed_dir: str | os.PathLike) -> VideoReIDBuilder:
  """The prepared builder holding `dataset` (same name, split and index) under `packed_dir`.

  Raises:
    DatasetError: nothing packed there for this dataset/split, or the packed index differs from `dataset`.
  """
  builder = make_builder(dataset.name, dataset.split, packed_dir)
  if not builder.is_prepared():
    raise DatasetError(f'{builder.data_dir}: no packed {dataset.name} split {dataset.split}; expected the output '
                       f'of {PACK_COMMAND}')
  if builder.info.metadata.get('fingerprint') != index_fingerprint(dataset):
    raise DatasetError(f'{builder.data_dir}: packed tracklets differ from the {dataset.name} index read from '
                       f'config.data_dir; repack with {PACK_COMMAND}')
  return builder
