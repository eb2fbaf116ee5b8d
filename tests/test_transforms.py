"""Decoding and clip-consistent augmentation: hand-worked crops/flips/erasing and the same draw for every frame."""

import io

import numpy as np
import PIL.Image
import pytest

from lstrl_jax.data import sampling
from lstrl_jax.data import transforms
from lstrl_jax.data.index import DatasetError
from lstrl_jax.data.sampler import clip_rng

H, W, PAD = 16, 8, 2


def _clip(seed=0, t=3):
  return np.random.default_rng(seed).integers(1, 256, size=(t, H, W, 3), dtype=np.uint8)


def _png(array):
  buffer = io.BytesIO()
  PIL.Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def test_decode_path_and_bytes_agree_and_resize(tmp_path):
  image = np.random.default_rng(1).integers(0, 256, size=(20, 10, 3), dtype=np.uint8)
  path = tmp_path / 'f.png'
  path.write_bytes(_png(image))
  np.testing.assert_array_equal(np.asarray(transforms.open_frame(str(path), 'x', 20, 10)), image)
  resized = np.asarray(transforms.open_frame(path.read_bytes(), 'x', H, W))
  expected = np.asarray(PIL.Image.fromarray(image).resize((W, H), PIL.Image.BILINEAR))
  np.testing.assert_array_equal(resized, expected)


def test_truncated_png_names_the_file(tmp_path):
  data = _png(np.random.default_rng(2).integers(0, 256, size=(40, 20, 3), dtype=np.uint8))
  path = tmp_path / 'cam1_person001_00003.png'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DatasetError, match='cam1_person001_00003.png: cannot decode'):
    transforms.open_frame(str(path), str(path), H, W)
  with pytest.raises(DatasetError, match='missing.png'):
    transforms.open_frame(str(tmp_path / 'missing.png'), 'missing.png', H, W)


def test_load_clip_repeats_frames_by_index():
  frames = [_png(f) for f in _clip(3, 3)]
  clip = transforms.load_clip(frames, ['a', 'b', 'c'], np.array([0, 0, 2, 2, 1]), H, W)
  originals = _clip(3, 3)
  np.testing.assert_array_equal(clip, originals[[0, 0, 2, 2, 1]])


def _reference(clip, params, pad):
  """numpy re-implementation: zero-pad, crop at (top, left), flip, erase with the ImageNet mean pixel."""
  padded = np.pad(clip, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = padded[:, params.top:params.top + H, params.left:params.left + W]
  out = np.array(out[:, :, ::-1] if params.flip else out)
  if params.erase:
    y, x, h, w = params.erase
    out[:, y:y + h, x:x + w] = (124, 116, 104)
  return out


def _augmented(clip, params, pad=PAD):
  frames = [_png(f) for f in clip]
  out = transforms.load_clip(frames, list('abc'), np.arange(len(clip)), H, W, (params, pad))
  return transforms.erase(out, params)


def test_crop_flip_erase_hand_worked():
  clip = _clip()
  same = transforms.ClipAugmentation(top=PAD, left=PAD, flip=False, erase=None)
  np.testing.assert_array_equal(_augmented(clip, same), clip)
  # Crop at the padded corner: PAD rows/cols of zeros, then the frame shifted down/right by PAD.
  corner = _augmented(clip, transforms.ClipAugmentation(0, 0, False, None))
  assert (corner[:, :PAD] == 0).all() and (corner[:, :, :PAD] == 0).all()
  np.testing.assert_array_equal(corner[:, PAD:, PAD:], clip[:, :H - PAD, :W - PAD])
  flipped = _augmented(clip, transforms.ClipAugmentation(PAD, PAD, True, None))
  np.testing.assert_array_equal(flipped, clip[:, :, ::-1])
  erased = _augmented(clip, transforms.ClipAugmentation(PAD, PAD, False, (3, 1, 5, 4)))
  np.testing.assert_array_equal(erased[:, 3:8, 1:5], np.broadcast_to([124, 116, 104], (3, 5, 4, 3)))
  outside = np.ones((H, W), bool)
  outside[3:8, 1:5] = False
  np.testing.assert_array_equal(erased[:, outside], clip[:, outside])


def test_augmentation_matches_a_numpy_reference_for_random_draws():
  clip = _clip(4)
  config = transforms.AugmentConfig(pad=PAD, erasing_prob=0.7)
  for seed in range(40):
    params = transforms.draw_augmentation(np.random.default_rng(seed), H, W, config)
    np.testing.assert_array_equal(_augmented(clip, params), _reference(clip, params, PAD))


def test_draws_stay_in_range_and_follow_the_probabilities():
  config = transforms.AugmentConfig(pad=PAD, flip_prob=0.5, erasing_prob=1.0)
  draws = [transforms.draw_augmentation(np.random.default_rng(s), H, W, config) for s in range(300)]
  assert {d.top for d in draws} == set(range(2 * PAD + 1)) == {d.left for d in draws}
  assert 100 < sum(d.flip for d in draws) < 200
  for d in draws:
    y, x, h, w = d.erase
    assert 0 <= y and y + h <= H and 0 <= x and x + w <= W and h < H and w < W
  never = transforms.AugmentConfig(pad=PAD, flip_prob=0.0, erasing_prob=0.0)
  for s in range(20):
    d = transforms.draw_augmentation(np.random.default_rng(s), H, W, never)
    assert not d.flip and d.erase is None


def test_erasing_area_and_aspect_follow_the_config():
  # Large frame so rounding is small: area fraction within [0.02, 0.4], aspect h/w within [0.3, 3.3].
  config = transforms.AugmentConfig(pad=0, erasing_prob=1.0)
  for s in range(100):
    y, x, h, w = transforms.draw_augmentation(np.random.default_rng(s), 256, 128, config).erase
    assert 0.02 * 0.9 <= h * w / (256 * 128) <= 0.4 * 1.1
    assert 0.3 * 0.8 <= h / w <= 3.3 * 1.2


def test_train_clip_applies_one_draw_to_every_frame():
  # Every frame holds the same (asymmetric) picture, so any per-frame difference in crop, flip or erasing
  # would make the output frames differ.
  picture = _png(_clip(5, 1)[0])
  element = {'frames': [picture] * 6, 'names': [f'f{i}' for i in range(6)], 'pid': 3, 'camid': 1}
  clip_fn = transforms.TrainClip(4, H, W, transforms.AugmentConfig(pad=PAD))
  flips = erases = 0
  for seed in range(30):
    out = clip_fn.random_map(element, np.random.default_rng(seed))
    assert out['clips'].shape == (4, H, W, 3) and out['clips'].dtype == np.uint8
    assert out['pids'] == 3 and out['pids'].dtype == np.int32 and out['camids'] == 1
    assert (out['clips'] == out['clips'][:1]).all()
    params = transforms.draw_augmentation(_after_rrs(seed, 6, 4), H, W, transforms.AugmentConfig(pad=PAD))
    flips += params.flip
    erases += params.erase is not None
  assert flips and erases  # the property was checked on flipped and erased clips too


def _after_rrs(seed, n, t):
  """The clip generator after TrainClip's RRS draw, i.e. where its augmentation draws start."""
  rng = np.random.default_rng(seed)
  sampling.rrs_train(n, t, rng)
  return rng


def test_train_clip_matches_its_steps_and_eval_clip_pads_with_zeros():
  frames = [_png(f) for f in _clip(6, 5)]
  element = {'frames': frames, 'names': list('abcde'), 'pid': 0, 'camid': 0}
  config = transforms.AugmentConfig(pad=PAD)
  out = transforms.TrainClip(4, H, W, config).random_map(element, np.random.default_rng(9))
  rng = np.random.default_rng(9)
  start = np.array([0, 1, 2, 3])
  stop = np.array([1, 2, 3, 5])  # chunks of n = 5, T = 4: floor(t * 5 / 4) = 0, 1, 2, 3, 5
  indices = rng.integers(start, stop)
  params = transforms.draw_augmentation(rng, H, W, config)
  expected = _reference(_clip(6, 5)[indices], params, PAD)
  np.testing.assert_array_equal(out['clips'], expected)
  row = {'frames': (), 'names': (), 'indices': np.zeros(4, np.int64), 'tracklet': -1, 'mask': False}
  padded = transforms.EvalClip(H, W).map(row)
  assert not padded['clips'].any() and padded['tracklet'] == -1 and not padded['mask']


@pytest.mark.parametrize('aspect, expected', [(3.0, (99, 33)), (0.5, (40, 81))])
def test_erasing_rectangle_orientation_hand_worked(aspect, expected):
  # Zhong et al.'s RandomErasing (and AP3D's): aspect r = h / w, so h = round(sqrt(area * r)) and
  # w = round(sqrt(area / r)). At 256 x 128 with area 0.1: 3276.8 px; r = 3: h = sqrt(9830.4) = 99.1,
  # w = sqrt(1092.3) = 33.0 (a tall rectangle); r = 0.5: h = sqrt(1638.4) = 40.5, w = sqrt(6553.6) = 81.0.
  config = transforms.AugmentConfig(pad=0, erasing_prob=1.0, erasing_area=(0.1, 0.1), erasing_aspect=(aspect, aspect))
  for seed in range(5):
    y, x, h, w = transforms.draw_augmentation(np.random.default_rng(seed), 256, 128, config).erase
    assert (h, w) == expected
    assert 0 <= y <= 256 - h and 0 <= x <= 128 - w


@pytest.mark.parametrize('probability', [0.5, 0.2])
def test_erasing_probability_at_the_frame_size_of_the_paper(probability):
  # At 256 x 128 with the paper's ranges almost every first attempt fits, so the erased clips follow
  # Binomial(2000, p); a bound of 4.9 sd has a false-alarm rate of 1e-6. p = 0.2 tells `<` from `>` apart.
  config = transforms.AugmentConfig(erasing_prob=probability)
  erased = sum(transforms.draw_augmentation(clip_rng(5, i, 0), 256, 128, config).erase is not None
               for i in range(2000))
  assert abs(erased - 2000 * probability) < 4.9 * np.sqrt(2000 * probability * (1 - probability)), erased


def test_train_clip_erases_the_same_rectangle_on_every_frame_of_different_frames():
  # Frames that differ from each other (not one picture repeated): the erased pixels are exactly the drawn
  # rectangle on every frame, and every frame keeps its own pixels elsewhere.
  frames = _clip(8, 5)
  element = {'frames': [_png(f) for f in frames], 'names': list('abcde'), 'pid': 0, 'camid': 0}
  config = transforms.AugmentConfig(pad=0, flip_prob=0.0, erasing_prob=1.0)
  for seed in range(10):
    out = transforms.TrainClip(5, H, W, config).random_map(element, np.random.default_rng(seed))['clips']
    y, x, h, w = transforms.draw_augmentation(_after_rrs(seed, 5, 5), H, W, config).erase
    inside = np.zeros((H, W), bool)
    inside[y:y + h, x:x + w] = True
    assert (out[:, inside] == transforms.MEAN_PIXEL).all()
    np.testing.assert_array_equal(out[:, ~inside], frames[:, ~inside])
