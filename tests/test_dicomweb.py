"""DICOMweb against a real PACS: Orthanc with its DICOMweb plugin (tests/orthanc_server.py)."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import pydicom

from conftest import sample_dicom_paths
from orthanc_server import orthanc, orthanc_factory  # noqa: F401  (fixtures)


def test_orthanc_stores_a_sample_and_qido_finds_it(orthanc):  # noqa: F811
    from dicomweb_client import DICOMwebClient

    path = sample_dicom_paths()[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    answer = orthanc.upload(path)
    assert answer["Status"] in ("Success", "AlreadyStored")
    client = DICOMwebClient(orthanc.dicomweb_url)
    found = client.search_for_instances(study_instance_uid=ds.StudyInstanceUID)
    assert [pydicom.Dataset.from_json(f).SOPInstanceUID for f in found] == [ds.SOPInstanceUID]
    assert orthanc.find(SOPInstanceUID=ds.SOPInstanceUID)[0]["ID"] == answer["ID"]


def test_orthanc_restarts_with_its_storage(orthanc_factory):  # noqa: F811
    """The fault tests kill the PACS mid-run and start it again: what it had stored is still there."""
    server = orthanc_factory()
    server.upload(sample_dicom_paths()[1])
    server.stop(kill=True)
    server.start()
    assert len(server.instances()) == 1
