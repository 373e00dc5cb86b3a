"""Near-duplicate radiographs by a 512-bit difference hash (dHash).

The hash of an image is the sign of its brightness gradient on a coarse grid:
the image is area-averaged (box filter) to 17 x 16 cells and each cell compared
with its right neighbour (256 bits), and to 16 x 17 cells and each compared
with the one below (256 bits). It ignores brightness, contrast and small
resampling differences, so re-exports of one radiograph hash alike. Two images
whose hashes differ in at most `max_bits` of the 512 bits are near-duplicates;
near-duplicate pairs are joined into groups (connected components).

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


def near_duplicate_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
  """Every pair of hashes at Hamming distance <= max_bits.

  Args:
    hashes: uint8 [N, B], packed hashes (`difference_hash` rows).
    max_bits: the largest distance that counts; < 0 finds none.

  Returns:
    int64 [P, 3]: rows (i, j, distance in bits) with i < j, sorted.
  """
  found = [np.zeros((0, 3), np.int64)]
  if max_bits < 0 or len(hashes) < 2:
    return found[0]
  bits = np.unpackbits(np.asarray(hashes, np.uint8), axis=1).astype(np.float32)
  ones = bits.sum(axis=1)
  rows = max(1, _BLOCK_ENTRIES // len(bits))
  for start in range(0, len(bits), rows):
    block = bits[start : start + rows]
    # |a xor b| = |a| + |b| - 2 a.b; exact in float32 (integers <= HASH_BITS).
    distance = ones[start : start + rows, None] + ones - 2.0 * (block @ bits.T)
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
