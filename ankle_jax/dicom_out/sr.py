"""One Comprehensive SR per case: a TID 1500 Measurement Report.

Content (highdicom.sr):
  * observer: the device 'ankle_jax' (its UID new per report);
  * procedure reported: Plain radiography (SCT 168537006);
  * measurement group 1, the case (tracking id 'case <case_id>'): finding
    type Fracture of ankle (SCT 16114001) at the ankle joint; the
    qualitative evaluation Fracture of ankle = Present / Absent at the
    threshold; the case probability (DCM 122157 Probability, unit UCUM '1',
    calibrated when the evaluation has a calibrator, else raw), referencing
    every source view; the threshold (DCM 122411 Threshold Value); the
    algorithm identification (name ankle_jax, version, parameters: runs,
    checkpoint steps, operating point, where and when it was chosen, the
    calibration);
  * one measurement group per view (tracking id 'view <n>'), its source
    image the view: the view's probability, referencing the view's SOP
    Instance UID.
The probabilities are the CSV's prob_calibrated, to float64 precision (the
numeric value's FloatingPointValue).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

import ankle_jax
from ankle_jax.dicom_out import identity as identity_lib
from ankle_jax.prediction import batch as batch_lib
from ankle_jax.prediction import decision as decision_lib
from ankle_jax.prediction import table

FRACTURE_OF_ANKLE = hd.sr.CodedConcept('16114001', 'SCT', 'Fracture of ankle')
PROBABILITY = codes.DCM.Probability
THRESHOLD = codes.DCM.ThresholdValue
UNITLESS = codes.UCUM.NoUnits


def algorithm(
    provenance: table.Provenance, rule: decision_lib.DecisionRule
) -> hd.sr.AlgorithmIdentification:
  """ankle_jax, its version, and what the decision rests on."""
  chosen = f' chosen on {rule.chosen_on}' if rule.chosen_on else ''
  if rule.date:
    chosen += f' (evaluation of {rule.date})'
  return hd.sr.AlgorithmIdentification(
      name=identity_lib.MANUFACTURER,
      version=ankle_jax.__version__,
      parameters=[
          f'runs={";".join(provenance.run_names)}',
          f'checkpoint_steps={";".join(str(s) for s in provenance.steps)}',
          f'vote={provenance.vote}',
          f'operating_point={rule.operating_point}{chosen}',
          f'threshold={rule.threshold!r} on {rule.applies_to}',
          f'calibration={rule.calibration}',
      ],
  )


def _probability(value: float, images, algorithm_id) -> hd.sr.Measurement:
  return hd.sr.Measurement(
      name=PROBABILITY,
      value=float(value),
      unit=UNITLESS,
      algorithm_id=algorithm_id,
      referenced_images=[
          hd.sr.SourceImageForMeasurement.from_source_image(ds) for ds in images
      ],
  )


def case_group(
    result: batch_lib.CaseResult,
    sources: Sequence[pydicom.Dataset],
    rule: decision_lib.DecisionRule,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
  """The case's finding, probability and threshold."""
  present = rule.is_fracture(result.prob_raw)
  return hd.sr.MeasurementsAndQualitativeEvaluations(
      tracking_identifier=hd.sr.TrackingIdentifier(
          uid=hd.UID(), identifier=f'case {result.case.case_id}'
      ),
      finding_type=FRACTURE_OF_ANKLE,
      finding_sites=[hd.sr.FindingSite(codes.SCT.AnkleJoint)],
      algorithm_id=algorithm_id,
      measurements=[
          _probability(rule.calibrated(result.prob_raw), sources, algorithm_id),
          hd.sr.Measurement(
              name=THRESHOLD, value=float(rule.threshold), unit=UNITLESS
          ),
      ],
      qualitative_evaluations=[
          hd.sr.QualitativeEvaluation(
              FRACTURE_OF_ANKLE,
              codes.SCT.Present if present else codes.SCT.Absent,
          )
      ],
  )


def view_group(
    number: int,
    prob: float,
    source: pydicom.Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
  """One view's probability, referencing the view."""
  return hd.sr.MeasurementsAndQualitativeEvaluations(
      tracking_identifier=hd.sr.TrackingIdentifier(
          uid=hd.UID(), identifier=f'view {number}'
      ),
      finding_type=FRACTURE_OF_ANKLE,
      algorithm_id=algorithm_id,
      source_images=[
          hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
      ],
      measurements=[_probability(prob, [source], algorithm_id)],
  )


def case_report(
    result: batch_lib.CaseResult,
    sources: Sequence[pydicom.Dataset],
    rules: dict[str, decision_lib.DecisionRule],
    provenance: table.Provenance,
    identity: identity_lib.Identity,
) -> hd.sr.ComprehensiveSR:
  """The SR of one case; `sources` are its views' headers, in view order."""
  algorithm_id = algorithm(provenance, rules['case'])
  groups = [case_group(result, sources, rules['case'], algorithm_id)]
  groups += [
      view_group(n, rules['image'].calibrated(v.prob_raw), ds, algorithm_id)
      for n, (v, ds) in enumerate(zip(result.views, sources), start=1)
  ]
  observer = hd.sr.ObserverContext(
      observer_type=codes.DCM.Device,
      observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
          uid=identity.new_uid(),
          name=identity_lib.MANUFACTURER,
          manufacturer_name=identity_lib.MANUFACTURER,
      ),
  )
  report = hd.sr.MeasurementReport(
      observation_context=hd.sr.ObservationContext(
          observer_device_context=observer
      ),
      procedure_reported=codes.SCT.PlainRadiography,
      imaging_measurements=groups,
  )
  sr = hd.sr.ComprehensiveSR(
      evidence=list(sources),
      content=report,
      series_instance_uid=identity.new_uid(),
      series_number=identity_lib.SR_SERIES_NUMBER,
      sop_instance_uid=identity.new_uid(),
      instance_number=1,
      manufacturer=identity_lib.MANUFACTURER,
      is_complete=True,
      series_description='ankle_jax fracture report, research use only',
  )
  identity.stamp(sr)
  identity_lib.declare_character_set(sr, sources[0])
  return sr
