"""Near-duplicate radiographs by a 512-bit difference hash (dHash).

The hash of an image is the sign of its brightness gradient on a coarse grid:
the image is area-averaged (box filter) to 17 x 16 cells and each cell compared
with its right neighbour (256 bits), and to 16 x 17 cells and each compared
with the one below (256 bits). It ignores brightness, contrast and small
resampling differences, so re-exports of one radiograph hash alike. Two images
whose hashes differ in at most `max_bits` of the 512 bits are near-duplicates;
near-duplicate pairs are joined into groups (connected components).

A left-right mirrored copy (a right ankle's view exported flipped, or a copy
flipped for display) counts too: each image is also hashed mirrored
(`mirrored_difference_hash`), and the distance of two images is the smallest
over their hashes as stored and with either one mirrored. (Taking the smaller
of the two hashes as a canonical one would not do: two near copies can pick
different orientations.)

Why 512 bits and not the common 64-bit dHash (9 x 8, horizontal only):
measured on the 1,706 FracAtlas leg radiographs (300 px, as stored by the
builder), the 64-bit hash puts different patients' radiographs at distance 0
(two legs side by side give the same coarse gradients), so no threshold
separates copies from look-alikes. With 512 bits, every copy found there (the
same exposure exported again: a side marker removed, a grey strip added, a
slight rescale) lies within 31 bits, and the nearest pairs of different
radiographs seen lie at 35 bits and beyond, among them repeat exposures of one
patient with the foot placed differently, which no threshold here separates from
different patients. `DEFAULT_MAX_BITS` = 32 (1/16 of the bits) catches the
copies; copies with a wide grey bar or a larger rescale (42-68 bits) and repeat
exposures are missed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
import scipy.sparse
import scipy.sparse.csgraph

HASH_SIDE = 16
HASH_BITS = 2 * HASH_SIDE * HASH_SIDE
DEFAULT_MAX_BITS = 32
# Entries of one block of the pairwise distance matrix (bounds the memory).
_BLOCK_ENTRIES = 1 << 22


def difference_hash(image: np.ndarray) -> np.ndarray:
  """The packed 512-bit dHash of one image.

  Args:
    image: [H, W] or [H, W, 1], any real dtype (e.g. the builder's uint16).

  Returns:
    uint8 [HASH_BITS // 8].
  """
  plane = np.asarray(image, np.float32).reshape(image.shape[:2])
  picture = Image.fromarray(plane)
  wide = np.asarray(
      picture.resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX)
  )
  tall = np.asarray(
      picture.resize((HASH_SIDE, HASH_SIDE + 1), Image.Resampling.BOX)
  )
  bits = np.concatenate(
      [(wide[:, :-1] > wide[:, 1:]).ravel(), (tall[:-1] > tall[1:]).ravel()]
  )
  return np.packbits(bits)


def mirrored_difference_hash(image: np.ndarray) -> np.ndarray:
  """The `difference_hash` of the image mirrored left-right: uint8 [HASH_BITS // 8].

  Args:
    image: [H, W] or [H, W, 1], any real dtype.
  """
  plane = np.asarray(image).reshape(image.shape[:2])
  return difference_hash(plane[:, ::-1])


def _unpacked(hashes: np.ndarray) -> np.ndarray:
  """float32 [N, HASH_BITS] 0/1 bits of packed hashes uint8 [N, B]."""
  return np.unpackbits(np.asarray(hashes, np.uint8), axis=1).astype(np.float32)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float32 [M, N]: bit distances between rows of a [M, K] and b [N, K]."""
  # |a xor b| = |a| + |b| - 2 a.b; exact in float32 (integers <= HASH_BITS).
  return a.sum(axis=1)[:, None] + b.sum(axis=1) - 2.0 * (a @ b.T)


def near_duplicate_pairs(
    hashes: np.ndarray, max_bits: int, mirrored: np.ndarray | None = None
) -> np.ndarray:
  """Every pair of images at Hamming distance <= max_bits.

  Args:
    hashes: uint8 [N, B], packed hashes (`difference_hash` rows).
    max_bits: the largest distance that counts; < 0 finds none.
    mirrored: uint8 [N, B], the hashes of the same images mirrored
      (`mirrored_difference_hash` rows), or None. Given, the distance of i and
      j is the smallest of d(h_i, h_j), d(h_i, m_j) and d(m_i, h_j), so a
      mirrored copy pairs with its original; None: as stored only.

  Returns:
    int64 [P, 3]: rows (i, j, distance in bits) with i < j, sorted.
  """
  found = [np.zeros((0, 3), np.int64)]
  if max_bits < 0 or len(hashes) < 2:
    return found[0]
  bits = _unpacked(hashes)
  mirror_bits = None if mirrored is None else _unpacked(mirrored)
  rows = max(1, _BLOCK_ENTRIES // len(bits))
  for start in range(0, len(bits), rows):
    block = bits[start : start + rows]
    distance = _hamming(block, bits)
    if mirror_bits is not None:
      mirror_block = mirror_bits[start : start + rows]
      distance = np.minimum(distance, _hamming(block, mirror_bits))
      distance = np.minimum(distance, _hamming(mirror_block, bits))
    i, j = np.nonzero(distance <= max_bits + 0.5)
    keep = j > i + start
    i, j = i[keep], j[keep]
    found.append(
        np.stack([i + start, j, np.rint(distance[i, j])], axis=1).astype(
            np.int64
        )
    )
  return np.concatenate(found)


def group_labels(num_items: int, pairs: np.ndarray) -> np.ndarray:
  """int [num_items]: the connected component of each item over the pairs.

  Args:
    num_items: N.
    pairs: int [P, >=2], item index pairs (extra columns are ignored).
  """
  pairs = np.asarray(pairs, np.int64)
  if not pairs.size:
    return np.arange(num_items)
  graph = scipy.sparse.coo_matrix(
      (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
      shape=(num_items, num_items),
  )
  return scipy.sparse.csgraph.connected_components(graph, directed=False)[1]
