r"""Searches a gallery: `python -m lstrl_jax.search --query q.npz --gallery g.npz --top 10 [--rerank] [--sheet s.png]`.

`--query` is a features file or a folder of tracklet folders (embedded first with `--ckpt`, as `embed` would,
with the gallery's clip selection); `--gallery` a features file from `embed`. Both must come from the same
model: the same config fingerprint and checkpoint step (DESIGN.md section 6), else one error line. For each
query the command prints its name and the `--top` nearest gallery tracklets: rank, distance, name.

Exact search in bounded memory (`top_k`): the gallery is scanned in chunks of `chunk_size` tracklets and the
queries in blocks of `query_block`; one jitted step computes a `[query_block, chunk_size]` distance block with
the evaluator's `metrics.distance_matrix` and merges its `jax.lax.top_k` into the running best k, one chunk
in flight at a time, so working memory is a few such blocks whatever the gallery size; the host holds the
gallery features (G x D float32: 2 GB for a million ResNet-18 features, D = 512). Ties keep gallery order,
as the evaluator's ranking does.
Measured on a million random features in benchmarks/search_scale.py. Past tens of millions of tracklets, or
for many queries a second, an approximate index (faiss) is the tool; this command stays exact.
`--rerank` applies k-reciprocal re-ranking (`evaluation.rerank`), which needs dense `[N, N]` matrices over
N = Q + G tracklets and so is refused above RERANK_LIMIT. `--sheet` draws the ranked-results sheet
(`evaluation.visualize.ranking_sheet`) of the first `--sheet_queries` queries: frames framed green / red when
both files carry pids and camids (matches / non-matches under 'cross_camera'), grey otherwise (unknown).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lstrl_jax import cli
from lstrl_jax.data import sampling, transforms
from lstrl_jax.evaluation import metrics, visualize
from lstrl_jax.evaluation import rerank as rerank_lib
from lstrl_jax.inference import common, embed

RERANK_LIMIT = 10_000  # query + gallery tracklets: re-ranking holds several [N, N] float32 matrices
CHUNK_SIZE = 65_536
QUERY_BLOCK = 256


@functools.partial(jax.jit, static_argnames=('k', 'distance'), donate_argnums=(0, 1))
def _merge_chunk(best_d, best_i, queries, chunk, valid, offset, *, k: int, distance: str):
  """Merges the k nearest of one gallery chunk into the running best `[Qb, k]` (distances, gallery indices)."""
  d = jnp.where(valid[None], metrics.distance_matrix(queries, chunk, distance=distance), jnp.inf)
  neg, index = jax.lax.top_k(-d, min(k, chunk.shape[0]))
  all_d = jnp.concatenate([best_d, -neg], axis=1)  # earlier chunks first: ties keep gallery order
  all_i = jnp.concatenate([best_i, index + offset], axis=1)
  neg, position = jax.lax.top_k(-all_d, k)
  return -neg, jnp.take_along_axis(all_i, position, axis=1)


def top_k(query: np.ndarray, gallery: np.ndarray, k: int, *, distance: str = 'cosine',
          chunk_size: int = CHUNK_SIZE, query_block: int = QUERY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
  """The k nearest gallery tracklets of each query, exactly, in bounded memory.

  Args:
    query: float `[Q, D]`; gallery: float `[G, D]` (host arrays; the gallery is read chunk by chunk).
    k: neighbours per query (at most G).
    distance: 'cosine' | 'euclidean' (`metrics.distance_matrix`).
    chunk_size: gallery tracklets per step; query_block: queries per step.

  Returns:
    (distances float32 `[Q, k]` ascending, indices int64 `[Q, k]` into the gallery); ties in gallery order.

  Raises:
    ValueError: k outside 1..G, differing feature sizes, or an unknown distance.
  """
  num_query, num_gallery = len(query), len(gallery)
  if not 1 <= k <= num_gallery:
    raise ValueError(f'top {k}: expected 1..{num_gallery} (the gallery size)')
  if query.shape[1:] != gallery.shape[1:]:
    raise ValueError(f'query features {query.shape} and gallery features {gallery.shape} differ in size')
  chunk_size, query_block = min(chunk_size, num_gallery), min(query_block, num_query)
  out_d = np.empty((num_query, k), np.float32)
  out_i = np.empty((num_query, k), np.int64)
  for q0 in range(0, num_query, query_block):
    block = np.zeros((query_block, query.shape[1]), np.float32)
    block[:min(query_block, num_query - q0)] = query[q0:q0 + query_block]
    best_d = jnp.full((query_block, k), jnp.inf, jnp.float32)
    best_i = jnp.zeros((query_block, k), jnp.int32)
    for g0 in range(0, num_gallery, chunk_size):
      real = min(chunk_size, num_gallery - g0)
      chunk = np.asarray(gallery[g0:g0 + real], np.float32)  # a view of full chunks: no host copy
      if real < chunk_size:  # the last chunk, padded to the compiled shape
        chunk = np.concatenate([chunk, np.zeros((chunk_size - real, chunk.shape[1]), np.float32)])
      best_d, best_i = _merge_chunk(best_d, best_i, block, chunk, np.arange(chunk_size) < real, np.int32(g0),
                                    k=k, distance=distance)
      best_d.block_until_ready()  # one chunk in flight: asynchronous dispatch would queue every chunk's copy
    rows = min(query_block, num_query - q0)
    out_d[q0:q0 + rows] = np.asarray(best_d)[:rows]
    out_i[q0:q0 + rows] = np.asarray(best_i)[:rows]
  return out_d, out_i


def reranked_top_k(query: np.ndarray, gallery: np.ndarray, k: int, *, distance: str) -> tuple[np.ndarray, np.ndarray]:
  """`top_k` after k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) of the full distance matrices.

  Raises:
    ValueError: more than RERANK_LIMIT tracklets in all, or too few for k1.
  """
  if len(query) + len(gallery) > RERANK_LIMIT:
    raise ValueError(f'--rerank on {len(query)} + {len(gallery)} tracklets: re-ranking holds [N, N] matrices; '
                     f'expected at most {RERANK_LIMIT:,} in all')
  dist = functools.partial(metrics.distance_matrix, distance=distance)
  d = np.asarray(rerank_lib.k_reciprocal_rerank(dist(query, gallery), dist(query, query), dist(gallery, gallery)))
  index = np.asarray(metrics.top_k_gallery(d, k)).astype(np.int64)
  return np.take_along_axis(d, index, axis=1), index


def check_same_model(query: dict[str, np.ndarray], gallery: dict[str, np.ndarray], where: str) -> None:
  """Raises FeaturesError unless both files have the same config fingerprint, step and feature size."""
  for key in ('fingerprint', 'step'):
    if str(query[key]) != str(gallery[key]):
      raise common.FeaturesError(f'{where}: query {key} {query[key]} but gallery {key} {gallery[key]}; expected '
                                 'features of the same model (embed both with one checkpoint)')
  if query['features'].shape[1] != gallery['features'].shape[1]:
    raise common.FeaturesError(f'{where}: query features of size {query["features"].shape[1]}, gallery '
                               f'{gallery["features"].shape[1]}; expected the same size')


def _tracklet_frames(arrays: dict[str, np.ndarray], i: int) -> list[str]:
  offsets = arrays['frame_offsets']
  return [str(p) for p in arrays['frame_paths'][offsets[i]:offsets[i + 1]]]


def write_sheet(path: str, query: dict[str, np.ndarray], gallery: dict[str, np.ndarray], ranked: np.ndarray,
                num_queries: int) -> pathlib.Path:
  """Ranked-results sheet of the first queries: their test-time RRS clip, then one middle frame per match.

  Raises:
    DatasetError: a frame that cannot be read any more.
  """
  seq_len, height, width = (int(gallery[k]) for k in ('seq_len', 'height', 'width'))
  labelled = all(k in a for a in (query, gallery) for k in ('pids', 'camids'))
  clips, tops, status = [], [], []
  for q in range(min(num_queries, len(ranked))):
    frames = _tracklet_frames(query, q)
    clips.append(transforms.load_clip(frames, frames, sampling.rrs_test(len(frames), seq_len), height, width))
    row = []
    for g in ranked[q]:
      frames = _tracklet_frames(gallery, g)
      row.append(transforms.load_clip(frames, frames, [len(frames) // 2], height, width)[0])
    tops.append(row)
    if labelled:
      status.append(visualize.ranking_status(int(query['pids'][q]), int(query['camids'][q]), gallery['pids'][ranked[q]],
                                             gallery['camids'][ranked[q]], 'cross_camera'))
    else:
      status.append(np.full(len(ranked[q]), visualize.JUNK))
  sheet = visualize.ranking_sheet(np.asarray(clips), np.asarray(tops), np.asarray(status))
  return visualize.save_png(sheet, path)


def search(query_path: str, gallery_path: str, *, ckpt: str | None = None, top: int = 10, rerank: bool = False,
           distance: str | None = None, chunk_size: int = CHUNK_SIZE) -> tuple[dict, dict, np.ndarray, np.ndarray]:
  """Loads (or embeds) the query, checks it against the gallery and ranks.

  Returns:
    (query arrays, gallery arrays, distances `[Q, k]`, gallery indices `[Q, k]`), k = min(top, G).

  Raises:
    FeaturesError, DatasetError, CheckpointError, ValueError: one-line messages.
  """
  gallery = common.read_features(gallery_path)
  if pathlib.Path(query_path).is_dir():
    if not ckpt:
      raise cli.UsageError(f'--query {query_path} is a folder: --ckpt is needed to embed it')
    listing = common.list_tracklets(query_path)
    query = embed.embed_arrays(common.load_trained(ckpt), query_path, listing=listing,
                               clip_selection=str(gallery['clip_selection']), progress=True)
  else:
    query = common.read_features(query_path)
  check_same_model(query, gallery, f'{query_path} vs {gallery_path}')
  distance = distance or str(gallery.get('distance', 'cosine'))
  k = min(top, len(gallery['features']))
  if rerank:
    d, index = reranked_top_k(query['features'], gallery['features'], k, distance=distance)
  else:
    d, index = top_k(query['features'], gallery['features'], k, distance=distance, chunk_size=chunk_size)
  return query, gallery, d, index
