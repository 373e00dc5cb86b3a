"""One Secondary Capture per view: the Grad-CAM overlay, burned in.

The RGB image (`render`) is the view as the model sees it (cropped,
squared, panel_size x panel_size) under its Grad-CAM map
(`saliency.overlay`, colour map 'jet'), a title band with the view's
probability and the case decision, a colour bar (Grad-CAM 0 to 1) at the
right, and a bottom band with `identity.RESEARCH_ONLY`. No identifier is
drawn in the image (BurnedInAnnotation NO: nothing in it identifies the
patient).

The object (`view_capture`, highdicom.sc.SCImage) keeps the source's
Patient and Study modules, its PatientOrientation (the crop and the square
padding move and scale the image, they do not turn it; empty when the
source has none) and references the source image (Source Image Sequence).
"""

from __future__ import annotations

import highdicom as hd
import matplotlib
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import pydicom

from ankle_jax import saliency
from ankle_jax.dicom_out import identity as identity_lib

TITLE_HEIGHT = 44
FOOTER_HEIGHT = 28
BAR_WIDTH = 64
_FONT_SIZE = 15


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def colour_bar(height: int) -> np.ndarray:
  """uint8 [height, BAR_WIDTH, 3]: the 'jet' scale, 1 on top, labelled."""
  strip = np.zeros((height, BAR_WIDTH, 3), np.uint8)
  values = np.linspace(1.0, 0.0, height)
  colours = matplotlib.colormaps['jet'](values)[:, :3]
  strip[:, 8:26] = np.round(colours * 255).astype(np.uint8)[:, None, :]
  image = Image.fromarray(strip)
  draw = ImageDraw.Draw(image)
  font = _font(12)
  draw.text((29, 0), '1.0', fill='white', font=font)
  draw.text((29, height // 2 - 6), '0.5', fill='white', font=font)
  draw.text((29, height - 14), '0.0', fill='white', font=font)
  return np.asarray(image)


def render(
    background_hw: np.ndarray, cam_hw: np.ndarray, title: str
) -> np.ndarray:
  """uint8 RGB [TITLE + P + FOOTER, P + BAR_WIDTH, 3] (module docstring)."""
  panel = saliency.overlay(background_hw, cam_hw)
  size = panel.shape[0]
  canvas = np.zeros(
      (TITLE_HEIGHT + size + FOOTER_HEIGHT, size + BAR_WIDTH, 3), np.uint8
  )
  canvas[TITLE_HEIGHT : TITLE_HEIGHT + size, :size] = panel
  canvas[TITLE_HEIGHT : TITLE_HEIGHT + size, size:] = colour_bar(size)
  image = Image.fromarray(canvas)
  draw = ImageDraw.Draw(image)
  for line, text in enumerate(title.splitlines()[:2]):
    draw.text((6, 4 + 20 * line), text, fill='white', font=_font())
  draw.text(
      (6, TITLE_HEIGHT + size + 6),
      identity_lib.RESEARCH_ONLY,
      fill=(255, 220, 0),
      font=_font(),
  )
  return np.asarray(image)


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
  values = list(source.get('PatientOrientation', None) or [])
  if len(values) == 2 and all(values):
    return str(values[0]), str(values[1])
  return None


def view_capture(
    source: pydicom.Dataset,
    pixels_rgb: np.ndarray,
    identity: identity_lib.Identity,
    series_uid: str,
    instance_number: int,
) -> hd.sc.SCImage:
  """The Secondary Capture of one view (module docstring)."""
  orientation = _orientation(source)
  sc = hd.sc.SCImage.from_ref_dataset(
      ref_dataset=source,
      pixel_array=pixels_rgb,
      photometric_interpretation='RGB',
      bits_allocated=8,
      coordinate_system='PATIENT',
      series_instance_uid=series_uid,
      series_number=identity_lib.SC_SERIES_NUMBER,
      sop_instance_uid=identity.new_uid(),
      instance_number=instance_number,
      manufacturer=identity_lib.MANUFACTURER,
      patient_orientation=orientation or ('L', 'F'),
      transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
  )
  if orientation is None:
    sc.PatientOrientation = ''
  # Type 2C for a paired body part (the ankle): the source's side, if known.
  side = str(source.get('Laterality', '') or source.get('ImageLaterality', ''))
  sc.Laterality = side if side in ('L', 'R') else ''
  reference = pydicom.Dataset()
  reference.ReferencedSOPClassUID = source.SOPClassUID
  reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
  sc.SourceImageSequence = [reference]
  sc.SeriesDescription = 'ankle_jax Grad-CAM, research use only'
  sc.ImageComments = (
      f'Grad-CAM overlay of the fracture evidence. {identity_lib.RESEARCH_ONLY}'
  )
  sc.BurnedInAnnotation = 'NO'
  identity.stamp(sc)
  identity_lib.declare_character_set(sc, source)
  return sc
